"""Which pip Whisper encoder lets a CTC readout trained on synthetic speech hear real speech best?

    python scripts/probe_encoder_ctc.py --encoder tiny.en --train build/s12/data/ctc.jsonl \
        --train build/s12/data/ctc_vocab.jsonl --out build/probe_tiny --steps 800

The encoder stays frozen and its 25 Hz states (Whisper's post-``ln_post`` states, pooled in pairs,
``audio.tokenizer.pooled_hidden_states``) are computed once and cached in ``--out``.  On top, a
readout shaped like the model's speech-in path learns by CTC to emit the backbone's tokens: a two-layer
MLP per 25 Hz frame (the encoder's projection), the mean of each 5 frames (grouping), a linear map and
the ``vocab_ctc`` adapter over SmolLM2's frozen embedding table.  The real LLaMA-Questions recordings
(dev) are then transcribed greedily; the report (JSON on stdout, also ``<out>/report.json``) gives
their WER and the share of content and function words heard (``ctc_transcribe.word_recall``).

Session 17 found that answering from speech tracks whether the content words were heard
(docs/default-model-history.md), so this compares encoders by the measure that matters, without a build.
A frozen encoder is a lower bound on what the build's fine-tuned one hears; the comparison is between
encoders under the same readout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from funaudiochat.modeling.build import token_spellings
from funaudiochat.modeling.vocab_adapter import VocabCTCAdapter, spelling_bags
from funaudiochat.training.ctc import CTC_CASES

logger = logging.getLogger("probe_encoder_ctc")


def id_bags(spellings: list[str], buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The control for spelling bags: as many n-gram slots per token, hashed from its id instead.

    Same shapes and parameter count, but no token shares a bucket with a similarly spelled one
    except by chance: what the spelling table gains beyond its extra parameters.
    """
    index, offsets = spelling_bags(spellings, buckets)
    counts = torch.diff(offsets, append=offsets.new_tensor([index.numel()])).tolist()
    ids = [zlib.crc32(f"{v}:{j}".encode()) % buckets for v, n in enumerate(counts) for j in range(n)]
    return torch.tensor(ids, dtype=torch.long), offsets


class Readout(nn.Module):
    """25 Hz encoder states -> 5 Hz CTC logits over the backbone's tokens plus a blank (last).

    With ``spelling`` (each token's text) and ``buckets`` > 0, the adapter has a spelling table
    (``VocabCTCAdapter``; zero at the start); ``source="ids"`` fills its bags by ``id_bags``.
    """

    def __init__(self, d_in: int, hidden: int, table: torch.Tensor, group: int = 5,
                 spelling: list[str] | None = None, buckets: int = 0, source: str = "letters") -> None:
        super().__init__()
        width = table.shape[1]
        self.frame = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.group_map = nn.Linear(width, width, bias=False)
        self.register_buffer("table", table, persistent=False)
        self.group = group
        if buckets > 0 and spelling is not None:
            index, offsets = (spelling_bags if source == "letters" else id_bags)(spelling, buckets)
            self.adapter = VocabCTCAdapter(width, buckets, index.numel(), offsets.numel())
            self.adapter.set_bags(index, offsets)
        else:
            self.adapter = VocabCTCAdapter(width)

    def forward(self, x: torch.Tensor, lens25: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        k = self.group
        pad = (-t) % k
        y = self.frame(x) * (torch.arange(t)[None, :] < lens25[:, None])[..., None]
        y = F.pad(y, (0, 0, 0, pad)).view(b, (t + pad) // k, k, -1).mean(dim=2)
        return self.adapter.logits(self.group_map(y), self.table), (lens25 + k - 1) // k


def read_items(paths: list[Path]) -> list[tuple[Path, str]]:
    """(audio path, text) from CTC-format files (``audio``, ``text``) or benchmark files (``audio_file``, ``question``)."""
    items = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            row = json.loads(line)
            if "audio" in row:
                items.append((path.parent / row["audio"], row["text"]))
            else:
                items.append((path.parent / "audio" / row["audio_file"], row["question"]))
    return items


def encode_all(encoder, items: list[tuple[Path, str]], cache: Path) -> list[torch.Tensor]:
    """25 Hz states of every item, fp16, cached in one file (rerunning with the same items reuses it)."""
    from tqdm import tqdm

    from funaudiochat.audio.io import load_audio
    from funaudiochat.audio.tokenizer import pooled_hidden_states

    if cache.is_file():
        feats = torch.load(cache, weights_only=True)
        if len(feats) == len(items):
            return feats
        logger.warning("%s holds %d items, not %d: recomputing", cache, len(feats), len(items))
    feats = [pooled_hidden_states(encoder, load_audio(p, 16000)).half()
             for p, _ in tqdm(items, desc=cache.stem, file=sys.stderr, mininterval=10)]
    tmp = cache.with_suffix(".tmp")
    torch.save(feats, tmp)
    tmp.replace(cache)
    return feats


def batch(feats: list[torch.Tensor], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([feats[i].shape[0] for i in idx])
    x = torch.zeros(len(idx), int(lens.max()), feats[idx[0]].shape[1])
    for row, i in enumerate(idx):
        x[row, : lens[row]] = feats[i].float()
    return x, lens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", required=True, choices=("tiny.en", "base"), help="pip Whisper encoder")
    p.add_argument("--train", type=Path, action="append", required=True, help="CTC-format JSONL (repeatable)")
    p.add_argument("--eval", type=Path, default=Path(__file__).resolve().parents[2] / "shared/benchdata/llama_questions/dev.jsonl",
                   help="benchmark JSONL with real recordings (default: LLaMA-Questions dev)")
    p.add_argument("--out", type=Path, required=True, help="folder for the feature caches and the report")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", choices=CTC_CASES, default="lower",
                   help="transcript case of the CTC targets (training.ctc.normalize_transcript)")
    p.add_argument("--spelling-buckets", type=int, default=0,
                   help="score tokens with a learned vector from their hashed character n-grams in this many "
                        "buckets besides their embedding (0: off; the adapter's ctc_spelling_buckets)")
    p.add_argument("--spelling-source", choices=("letters", "ids"), default="letters",
                   help="fill the spelling table's bags from each token's letters, or (the control) from its id")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder of the feature caches, to share them between runs (default: --out)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ctc_transcribe import word_recall

    from funaudiochat.audio.tokenizer import build_whisper_encoder
    from funaudiochat.evaluation.wer import corpus_wer
    from funaudiochat.pretrained import smollm2_backbone_dir
    from funaudiochat.training.ctc import greedy_decode, transcript_ids

    args.out.mkdir(parents=True, exist_ok=True)
    train_items, eval_items = read_items(args.train), read_items([args.eval])
    encoder = build_whisper_encoder(args.encoder)
    t0 = time.time()
    cache = args.cache or args.out
    cache.mkdir(parents=True, exist_ok=True)
    train_feats = encode_all(encoder, train_items, cache / "train_feats.pt")
    eval_feats = encode_all(encoder, eval_items, cache / "eval_feats.pt")
    encode_s = time.time() - t0

    backbone = smollm2_backbone_dir()
    tok = AutoTokenizer.from_pretrained(backbone)
    from safetensors import safe_open

    with safe_open(str(backbone / "model.safetensors"), "pt") as f:
        table = f.get_tensor("model.embed_tokens.weight").float()
    torch.manual_seed(args.seed)
    model = Readout(train_feats[0].shape[1], args.hidden, table, spelling=token_spellings(tok, table.shape[0]),
                    buckets=args.spelling_buckets, source=args.spelling_source)
    targets = [transcript_ids(tok, text, args.case) for _, text in train_items]
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=args.lr, weight_decay=0.01)
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, args.steps))))))
    rng = np.random.default_rng(args.seed)
    losses = []
    t0 = time.time()
    model.train()
    for step in range(args.steps):
        idx = rng.choice(len(train_feats), args.batch_size, replace=False).tolist()
        x, lens = batch(train_feats, idx)
        logits, out_lens = model(x, lens)
        tgt = [torch.tensor(targets[i]) for i in idx]
        loss = F.ctc_loss(logits.float().log_softmax(-1).transpose(0, 1), torch.cat(tgt), out_lens,
                          torch.tensor([len(t) for t in tgt]), blank=logits.shape[-1] - 1, zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            logger.info("step %d loss %.3f (mean of last 50)", step + 1, float(np.mean(losses[-50:])))
    train_s = time.time() - t0

    model.eval()
    refs, hyps = [], []
    with torch.no_grad():
        for start in range(0, len(eval_feats), 32):
            idx = list(range(start, min(start + 32, len(eval_feats))))
            x, lens = batch(eval_feats, idx)
            logits, out_lens = model(x, lens)
            for i, ids in zip(idx, greedy_decode(logits, out_lens)):
                refs.append(eval_items[i][1])
                hyps.append(tok.decode(ids, skip_special_tokens=True))
    report = {
        "encoder": args.encoder, "train_items": len(train_items), "eval": str(args.eval), "n": len(refs),
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "hidden": args.hidden, "seed": args.seed, "case": args.case,
        "spelling_buckets": args.spelling_buckets,
        "spelling_source": args.spelling_source, "wer": round(corpus_wer(refs, hyps).rate, 4), **word_recall(refs, hyps),
        "loss_last_100": round(float(np.mean(losses[-100:])), 4),
        "encode_s": round(encode_s, 1), "train_s": round(train_s, 1),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    eval_ids = [json.loads(line).get("id") for line in args.eval.read_text(encoding="utf-8").split("\n") if line.strip()]
    with open(args.out / "transcripts.jsonl", "w", encoding="utf-8") as f:
        for (path, ref), hyp, item_id in zip(eval_items, hyps, eval_ids):
            f.write(json.dumps({"id": item_id, "audio": path.name, "reference": ref, "ctc": hyp}) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
