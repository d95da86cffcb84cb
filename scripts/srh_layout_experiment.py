"""SRH-only comparison of the released ("ahead") and the paced text layout of spoken replies.

Question: does the Speech Refined Head learn to say the reply when each text token is fed in the
group where its speech starts (``funaudiochat/training/pacing.py``) instead of packed at the start?

Procedure (CPU, about an hour on the 2-core machine; docs/default-model-history.md, session 14):

1. ``cache``: for the spoken answers of a default-model build work dir, the backbone of a trained
   model reads [system, typed question, spoken reply] once per layout; the SRH's inputs (state + text
   embedding per 5 Hz position, previous and target speech token per 25 Hz frame) are cached.  The
   hold-out is ``train_codec.heldout`` (1 in 8), the one the shipped detokenizer was fine-tuned
   without, so the detokenizer has never seen the held-out answers either.
2. ``train``: a freshly initialised SRH (the speech table it shares with the input side is kept) is
   trained on one layout's rows with ``training/srh_refine.train_srh``; same seed, steps and rows.
3. ``speak``: for held-out replies the head samples every speech token itself (the engine's speech
   sampling), with the backbone states of the true reply (teacher forcing at 5 Hz only), and writes
   a ``train_codec evaluate-extra`` manifest; that command gives the ASR-WER against the written answer.

``extra`` makes more assistant-voice material (the build's vocabulary sentences read aloud in joe's
voice), ``cache --extra`` caches it, ``train --extra-rows`` adds it; ``plot`` draws the runs' curves.

The backbone was trained on the ahead layout, so its states under the paced one are off its training
distribution; the comparison therefore favours the ahead layout, if anything.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from pathlib import Path

import torch

logger = logging.getLogger("srh_layout")


def _items(work: Path, n_train: int, n_val: int) -> tuple[list[dict], list[dict]]:
    from funaudiochat.audio.train_codec import heldout
    from funaudiochat.default_model.speech_data import answer_recording, read_token_cache

    tokens = read_token_cache(work / "data" / "answer_tokens.jsonl")
    answers = {}
    for line in (work / "answers.jsonl").read_text(encoding="utf-8").split("\n"):
        if line.strip():
            obj = json.loads(line)
            answers[obj["id"]] = obj
    train, val = [], []
    for item_id in sorted(tokens):
        a = answers.get(item_id)
        wav = answer_recording(work, item_id)
        if a is None or not wav.is_file():
            continue
        row = {"id": item_id, "question": a["question"], "answer": a["answer"], "tokens": tokens[item_id], "wav": wav}
        (val if heldout(item_id, 8) else train).append(row)
    return train[:n_train], val[:n_val]


def _encode(processor, item: dict):
    """One conversation, laid out by ``processor`` (a paced processor paces the reply by its recording).

    A reply with more text tokens than speech groups is refused here (ValueError) rather than left to
    the processor's truncating fallback, so that each layout's cache holds only replies laid out as named.
    """
    import soundfile as sf

    from funaudiochat.processing import Message
    from funaudiochat.prompts import system_prompt
    from funaudiochat.training.pacing import word_starts_from_audio

    cfg = processor.config
    starts = None
    if cfg.text_layout == "paced":
        k = cfg.audio_config.group_size
        n_text, n_groups = len(processor.text(item["answer"])), -(-(cfg.speech_delay + len(item["tokens"])) // k)
        if n_text > n_groups:
            raise ValueError(f"{n_text} text tokens do not fit in {n_groups} speech groups")
        audio, sr = sf.read(item["wav"], dtype="float32")
        starts = word_starts_from_audio(item["answer"], audio, len(item["tokens"]), sr)
    msgs = [Message("system", text=system_prompt("s2s")), Message("user", text=item["question"]),
            Message("assistant", text=item["answer"], speech_tokens=item["tokens"], word_starts=starts)]
    return processor.encode(msgs)


def cmd_extra(args) -> None:
    """Assistant-voice read-aloud turns, for more SRH material (``default_model/read_aloud.py``).

    Session 14 read the build's vocabulary sentences (``--work``'s ``ctc_vocab.jsonl``: its piper
    recordings plus ``--synthesize`` N of its espeak ones spoken anew by joe).  With ``--read-aloud N``
    the build's own read-aloud stage makes N sentences of the pool that the vocabulary set left out,
    in ``--out`` as its work dir.  Either way ``--out``/extra.jsonl lists them for ``cache --extra``.
    """
    import soundfile as sf

    from funaudiochat.audio.tokenizer import KMeansSpeechTokenizer
    from funaudiochat.default_model.read_aloud import READ_ALOUD_PROMPT, build_read_aloud
    from funaudiochat.default_model.speech_data import TTSEngines

    torch.set_num_threads(args.threads)
    data = Path(args.work) / "data"
    pool = [json.loads(x) for x in (data / "ctc_vocab.jsonl").read_text(encoding="utf-8").split("\n") if x.strip()]
    out = Path(args.out)
    lines = []
    if args.read_aloud:
        path = build_read_aloud(args.benchdata, [r["text"] for r in pool], out, args.read_aloud)
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                rec = json.loads(line)
                turn, wav = rec["messages"][-1], out / "data" / rec["meta"]["recording"]
                lines.append(json.dumps({"id": rec["id"], "question": rec["messages"][1]["content"],
                                         "answer": turn["content"], "tokens": turn["speech_tokens"],
                                         "wav": str(wav.resolve())}))
    else:
        joe = [r for r in pool if r["tts"]["engine"] == "piper"]
        other = [r for r in pool if r["tts"]["engine"] != "piper"][: args.synthesize]
        (out / "wav").mkdir(parents=True, exist_ok=True)
        tokenizer = KMeansSpeechTokenizer.from_pretrained()
        piper = TTSEngines().get("piper") if other else None
        for r, recorded in [(r, True) for r in joe] + [(r, False) for r in other]:
            if recorded:
                wav = (data / r["audio"]).resolve()
                audio, _ = sf.read(wav, dtype="float32")
            else:
                wav = (out / "wav" / (r["id"].replace(":", "_").replace("#", "_") + ".wav")).resolve()
                if not wav.is_file():
                    audio, sr = piper.synthesize(r["text"], voice="joe", speed=1.0)
                    sf.write(wav, audio, sr)
                audio, _ = sf.read(wav, dtype="float32")
            lines.append(json.dumps({"id": r["id"], "question": READ_ALOUD_PROMPT.format(text=r["text"]),
                                     "answer": r["text"], "tokens": [int(t) for t in tokenizer.encode(audio)],
                                     "wav": str(wav)}))
    (out / "extra.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("%d extra sentences in %s", len(lines), out / "extra.jsonl")


def cmd_cache(args) -> None:
    from transformers import AutoTokenizer

    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.processing import FunAudioChatProcessor
    from funaudiochat.training.srh_refine import cache_rows

    torch.set_num_threads(args.threads)
    model = FunAudioChatForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # the backbone reads text_ids as given, so one model serves both layouts; only the processor differs
    paced = copy.deepcopy(model.config)
    paced.text_layout = "paced"
    processors = {"ahead": FunAudioChatProcessor(tokenizer, model.config), "paced": FunAudioChatProcessor(tokenizer, paced)}
    train, val = _items(Path(args.work), args.n_train, args.n_val)
    splits = [("val", val), ("train", train)]
    if args.extra:
        extra = [json.loads(x) for x in Path(args.extra).read_text(encoding="utf-8").split("\n") if x.strip()]
        splits = [("extra", extra)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for layout in args.layouts:
        for split, items in splits:
            path = out / f"{layout}_{split}.pt"
            if path.is_file():
                continue
            exs, ids = [], []
            for it in items:
                try:
                    exs.append(_encode(processors[layout], it))
                    ids.append(it["id"])
                except ValueError as exc:  # a text longer than its recording's groups
                    logger.warning("%s: skipped (%s)", it["id"], exc)
            batches = (processors[layout].collate(exs[i : i + 8]) for i in range(0, len(exs), 8))
            rows = cache_rows(model, batches, args.context_groups, total=-(-len(exs) // 8))
            torch.save({"ids": ids, "rows": [r.__dict__ for r in rows]}, path)
            logger.info("%s: %d rows", path, len(rows))


def _rows(path: Path):
    from funaudiochat.training.srh_refine import SRHRow

    obj = torch.load(path, weights_only=True)
    return obj["ids"], [SRHRow(**r) for r in obj["rows"]]


def cmd_train(args) -> None:
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.training.srh_refine import evaluate_srh, reinitialise_head, train_srh

    torch.set_num_threads(args.threads)
    model = FunAudioChatForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    model.config.audio_config.srh_prev_scale = args.prev_scale
    reinitialise_head(model, args.seed)
    cache = Path(args.cache)
    _, train = _rows(cache / f"{args.layout}_train.pt")
    train = train[: args.max_rows] if args.max_rows else train  # the data-size check
    if args.extra_rows:
        train = train + _rows(cache / f"{args.layout}_extra.pt")[1]
    for path in args.extra_cache or []:  # more cached read-aloud rows, from other caches
        train = train + _rows(Path(path))[1]
    _, val = _rows(cache / f"{args.layout}_val.pt")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    train_srh(model, train, args.steps, args.batch_size, args.lr_max, args.lr_min, seed=args.seed, val_rows=val,
              eval_every=max(args.steps // 10, 1), metrics_path=out / "metrics.jsonl")
    final = evaluate_srh(model, val)
    torch.save(model.audio_invert_tower.state_dict(), out / "srh.pt")
    (out / "summary.json").write_text(json.dumps({"layout": args.layout, "train_rows": len(train), "val_rows": len(val),
                                                  "steps": args.steps, "prev_scale": args.prev_scale,
                                                  "held_out": final}, indent=2) + "\n")
    print(json.dumps({"layout": args.layout, **final}))


def _speak_row(model, row, sampling, generator) -> list[int]:
    """Sample every speech frame of one cached row; the 5 Hz conditions stay those of the true reply."""
    from funaudiochat.generation.sampling import sample_speech_token

    cfg = model.config.audio_config
    ignore = model.config.ignore_index
    conditions = model.audio_invert_tower.condition(row.conditions.float()[None], torch.zeros_like(row.conditions.float()[None]))
    spoken_at = torch.nonzero(row.targets != ignore).flatten()
    first = int(spoken_at[0])
    prev = row.prev.clone()
    out: list[int] = []
    cache = None
    banned = torch.tensor([cfg.pad_token_id], dtype=torch.long)
    for t in range(conditions.shape[1]):
        logits, cache = model.audio_invert_tower(conditions[:, t : t + 1], prev[None, t : t + 1], cache=cache,
                                                 use_cache=True, position_ids=torch.tensor([[t]]))
        if t < first:
            continue
        tok = sample_speech_token(logits[0, -1], sampling, generator, out, banned)
        if tok == cfg.eos_token_id:
            break
        if t + 1 < prev.numel():
            prev[t + 1] = tok
        if tok < cfg.bos_token_id:
            out.append(tok)
    return out


def cmd_speak(args) -> None:
    from funaudiochat.generation.sampling import DEFAULT_SPEECH_SAMPLING
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration

    torch.set_num_threads(args.threads)
    model = FunAudioChatForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    if args.run:
        summary = Path(args.run) / "summary.json"
        if summary.is_file():  # runs before session 24 have no prev_scale: 1.0
            model.config.audio_config.srh_prev_scale = json.loads(summary.read_text()).get("prev_scale", 1.0)
        model.audio_invert_tower.load_state_dict(torch.load(Path(args.run) / "srh.pt", weights_only=True))
    ids, rows = _rows(Path(args.cache) / f"{args.layout}_val.pt")
    # the same replies for every layout: those that both layouts could lay out
    for other in ("ahead", "paced"):
        keep = set(_rows(Path(args.cache) / f"{other}_val.pt")[0])
        rows = [r for i, r in zip(ids, rows) if i in keep]
        ids = [i for i in ids if i in keep]
    _, val = _items(Path(args.work), 0, 10**9)
    by_id = {v["id"]: v for v in val}
    generator = torch.Generator().manual_seed(args.seed)
    lines = []
    with torch.no_grad():
        for item_id, row in list(zip(ids, rows))[: args.n]:
            it = by_id[item_id]
            tokens = it["tokens"] if args.truth else _speak_row(model, row, DEFAULT_SPEECH_SAMPLING, generator)
            lines.append(json.dumps({"audio": str(Path(it["wav"]).resolve()), "voice": "joe", "text": it["answer"], "tokens": tokens}))
    Path(args.manifest).write_text("\n".join(lines) + "\n")
    logger.info("wrote %d utterances to %s", len(lines), args.manifest)


def cmd_plot(args) -> None:
    """Held-out loss and accuracy by step of several ``train`` runs, side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for spec in args.runs:
        folder, _, label = spec.partition("=")
        rows = [json.loads(x) for x in (Path(folder) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        rows = [r for r in rows if "val_loss" in r]
        steps = [r["step"] for r in rows]
        loss_ax.plot(steps, [r["val_loss"] for r in rows], marker="o", label=label or folder)
        acc_ax.plot(steps, [100 * r["val_accuracy"] for r in rows], marker="o", label=label or folder)
    for ax, what in ((loss_ax, "held-out loss (nats)"), (acc_ax, "held-out top-1 accuracy (%)")):
        ax.set_xlabel("step (16 rows)")
        ax.set_ylabel(what)
    loss_ax.set_title("SRH held-out loss")
    acc_ax.set_title("SRH held-out accuracy")
    loss_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    logger.info("wrote %s", args.out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--work", required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--n-train", type=int, default=600)
    c.add_argument("--n-val", type=int, default=60)
    c.add_argument("--layouts", nargs="+", default=["ahead", "paced"])
    c.add_argument("--context-groups", type=int, default=4)
    c.add_argument("--extra", help="cache an `extra` file's sentences (as <layout>_extra.pt) instead of the build's replies")
    x = sub.add_parser("extra")
    x.add_argument("--work", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--synthesize", type=int, default=0, help="speak this many more pool sentences in joe's voice")
    x.add_argument("--read-aloud", type=int, default=0, help="make this many read-aloud turns as the build does")
    x.add_argument("--benchdata", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "benchdata"))
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--cache", required=True)
    t.add_argument("--layout", required=True, choices=["ahead", "paced"])
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=1200)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr-max", type=float, default=1e-3)
    t.add_argument("--lr-min", type=float, default=1e-4)
    t.add_argument("--max-rows", type=int, default=None, help="train on the first N cached rows only")
    t.add_argument("--extra-rows", action="store_true", help="also train on the cached extra sentences")
    t.add_argument("--extra-cache", nargs="+", help="also train on the rows of these <layout>_extra.pt files")
    t.add_argument("--prev-scale", type=float, default=1.0,
                   help="config.srh_prev_scale of the head (session 24: 30 for funaudiochat-tiny)")
    s = sub.add_parser("speak")
    s.add_argument("--model", required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--cache", required=True)
    s.add_argument("--layout", required=True, choices=["ahead", "paced"])
    s.add_argument("--run", help="a train output folder (srh.pt); not needed with --truth")
    s.add_argument("--truth", action="store_true", help="write the replies' true speech tokens (the codec's ceiling)")
    s.add_argument("--manifest", required=True)
    s.add_argument("--n", type=int, default=40)
    g = sub.add_parser("plot")
    g.add_argument("runs", nargs="+", help="FOLDER=label of each train run")
    g.add_argument("--out", required=True)
    for q in (c, t, s, x):
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    {"extra": cmd_extra, "cache": cmd_cache, "train": cmd_train, "speak": cmd_speak, "plot": cmd_plot}[args.cmd](args)


if __name__ == "__main__":
    main()
