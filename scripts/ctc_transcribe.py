"""CTC transcripts of a ``vocab_ctc`` model's speech path, and their WER: how much of the words reach the backbone.

    python scripts/ctc_transcribe.py MODEL DATA.jsonl [--audio-root DIR] [--limit N] [--out rows.jsonl]

MODEL is ``default`` (the shipped funaudiochat-tiny) or a ``save_pretrained`` folder.  DATA is the CTC
format (``audio``, ``text``) or a benchmark set (``audio_file`` with ``question`` or ``reference``,
e.g. ../shared/benchdata/llama_questions/dev.jsonl).  Prints the corpus WER (normalised text, as
``funaudiochat eval`` scores ASR) as JSON on stdout, with the share of the reference's content words
and function words (``FUNCTION_WORDS``) that the transcript holds anywhere: WER is dominated by the
short function words, while an answer depends on the content words ("France", "planet").  Per-item
transcripts go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

logger = logging.getLogger("ctc_transcribe")

#: Words that carry no topic in a quiz question; everything else counts as a content word.
FUNCTION_WORDS = frozenset(
    "a an the of in on at to is are was were what which who whom whose where when why how do does did by "
    "for with and or from as that this it its be been has have had our your their his her most first".split())


def heard_set(transcript: str) -> set[str]:
    """The normalised words of a transcript (the readout's end-of-text token dropped)."""
    from funaudiochat.evaluation.normalize import normalize_text

    return set(normalize_text(transcript.replace("<|endoftext|>", " ")).split())


def heard_words(reference: str, transcript: str) -> list[tuple[str, bool]]:
    """Each normalised reference word and whether the transcript holds it anywhere (order ignored)."""
    from funaudiochat.evaluation.normalize import normalize_text

    heard = heard_set(transcript)
    return [(word, word in heard) for word in normalize_text(reference).split()]


def heard_share(reference: str, transcript: str) -> float:
    """Share of the reference's content words the transcript holds (1.0 if it has none)."""
    content = [hit for word, hit in heard_words(reference, transcript) if word not in FUNCTION_WORDS]
    return sum(content) / len(content) if content else 1.0


def word_recall(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Share of reference words (normalised) found anywhere in the transcript, content vs function words."""
    found = {"content": [0, 0], "function": [0, 0]}
    for ref, hyp in zip(references, hypotheses):
        for word, hit in heard_words(ref, hyp):
            kind = found["function" if word in FUNCTION_WORDS else "content"]
            kind[0] += hit
            kind[1] += 1
    return {f"{k}_word_recall": round(hit / total, 4) if total else 0.0 for k, (hit, total) in found.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="'default' or a save_pretrained folder")
    p.add_argument("data", type=Path, help="JSONL with audio + text (CTC or benchmark format)")
    p.add_argument("--audio-root", type=Path, default=None, help="folder of relative audio paths "
                   "(default: the JSONL's folder, then its 'audio/' subfolder)")
    p.add_argument("--limit", type=int, default=None, help="first N items only")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=None, help="write one JSON row per item here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    from funaudiochat.audio.features import batch_features
    from funaudiochat.audio.io import load_audio
    from funaudiochat.chat import load_engine
    from funaudiochat.evaluation.wer import corpus_wer
    from funaudiochat.training.ctc import greedy_decode

    engine = load_engine(args.model)  # "default" or a folder, as the CLI's --model
    model, tok = engine.model.eval(), engine.processor.tokenizer
    if model.speech_vocab_adapter is None:
        raise SystemExit(f"error: {args.model} has the linear speech adapter; CTC transcripts need 'vocab_ctc'")
    rows = [json.loads(x) for x in args.data.read_text(encoding="utf-8").split("\n") if x.strip()]
    rows = rows[: args.limit] if args.limit else rows
    roots = [args.audio_root] if args.audio_root else [args.data.parent, args.data.parent / "audio"]

    def audio_path(r: dict) -> Path:
        name = r.get("audio") or r.get("audio_file")
        for root in roots:
            if (root / name).is_file():
                return root / name
        raise SystemExit(f"error: audio {name!r} not found under {', '.join(map(str, roots))}")

    refs = [r.get("text") or r.get("question") or r.get("reference") for r in rows]
    hyps: list[str] = []
    n_mels = model.config.audio_config.num_mel_bins
    for i in range(0, len(rows), args.batch_size):
        waves = [load_audio(audio_path(r)) for r in rows[i : i + args.batch_size]]
        feats, mask = batch_features(waves, n_mels)
        with torch.no_grad():
            logits, lens = model.speech_ctc_logits(feats, mask)
        hyps += [tok.decode(ids).strip() for ids in greedy_decode(logits, lens)]
        logger.info("%d / %d", len(hyps), len(rows))
    if args.out:
        with args.out.open("w", encoding="utf-8") as f:
            for r, ref, hyp in zip(rows, refs, hyps):
                f.write(json.dumps({"id": r.get("id"), "reference": ref, "ctc": hyp}, ensure_ascii=False) + "\n")
    print(json.dumps({"model": args.model, "data": str(args.data), "n": len(rows),
                      "wer": round(corpus_wer(refs, hyps).rate, 4), **word_recall(refs, hyps)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
