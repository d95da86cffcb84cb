"""Do a ``vocab_ctc`` model's CTC transcripts lose more words when the question is spoken faster?

    python scripts/ctc_errors_by_rate.py ROWS.jsonl ../shared/benchdata/llama_questions/dev.jsonl

ROWS is the ``--out`` file of ``scripts/ctc_transcribe.py`` (``id``, ``reference``, ``ctc``).  The
adapter emits at most one backbone token per CTC position, one position per 5 Hz group, so a
question spoken at more than one token per 200 ms cannot come through whole.  For each recording the
rate is the reference's backbone tokens per 5 Hz group of its voiced span (20 ms frames above 5 % of
the loudest, first to last).  Prints JSON on stdout: the distribution of rates, the correlation of
rate with each item's WER and deletion rate, and both by rate band.  If the 5 Hz capacity limited
recognition, fast questions would lose more words (session 17, docs/default-model-history.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger("ctc_errors_by_rate")

BANDS = ((0.0, 0.7), (0.7, 0.85), (0.85, 1.0), (1.0, float("inf")))


def voiced_seconds(audio: np.ndarray, sr: int, frame_s: float = 0.02, floor: float = 0.05) -> float:
    """Seconds from the first to the last 20 ms frame whose RMS is above ``floor`` x the loudest one."""
    n = int(sr * frame_s)
    frames = audio[: len(audio) // n * n].reshape(-1, n)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > floor * rms.max()) if rms.size and rms.max() > 0 else np.array([], int)
    if loud.size == 0:
        raise ValueError("silent recording: no frame above the floor")
    return float((loud[-1] - loud[0] + 1) * frame_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", type=Path, help="per-item transcripts from scripts/ctc_transcribe.py --out")
    p.add_argument("data", type=Path, help="the benchmark JSONL they were made from (audio_file per id)")
    p.add_argument("--audio-root", type=Path, default=None, help="folder of the audio files (default: DATA's audio/)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    import soundfile as sf
    from transformers import AutoTokenizer

    from funaudiochat.evaluation.normalize import normalize_text
    from funaudiochat.evaluation.wer import corpus_wer
    from funaudiochat.pretrained import smollm2_backbone_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_backbone_dir())
    root = args.audio_root or args.data.parent / "audio"
    items = {}
    for line in args.data.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            item = json.loads(line)
            items[item["id"]] = item
    rates, wers, dels = [], [], []
    for line in args.rows.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        row = json.loads(line)
        if row["id"] not in items:
            raise SystemExit(f"error: {args.rows}: id {row['id']!r} is not in {args.data}")
        audio, sr = sf.read(root / items[row["id"]]["audio_file"], dtype="float32")
        ref = normalize_text(row["reference"])
        tokens = len(tokenizer(" " + ref, add_special_tokens=False)["input_ids"])
        rates.append(tokens / (voiced_seconds(audio, sr) * 5))
        edits = corpus_wer([row["reference"]], [row["ctc"].replace("<|endoftext|>", " ")])
        wers.append(edits.rate)
        dels.append(edits.deletions / edits.ref_len)
    rate, wer, dele = np.array(rates), np.array(wers), np.array(dels)
    report = {
        "rows": str(args.rows), "n": int(rate.size),
        "tokens_per_group": {"median": round(float(np.median(rate)), 3), "p90": round(float(np.percentile(rate, 90)), 3),
                             "max": round(float(rate.max()), 3), "over_1": int((rate > 1).sum())},
        "corr_rate_wer": round(float(np.corrcoef(rate, wer)[0, 1]), 3),
        "corr_rate_deletions": round(float(np.corrcoef(rate, dele)[0, 1]), 3),
        "by_rate": [
            {"rate": [lo, hi if np.isfinite(hi) else None], "n": int(s.sum()),
             "wer": round(float(wer[s].mean()), 3) if s.any() else None,
             "deletions": round(float(dele[s].mean()), 3) if s.any() else None}
            for lo, hi in BANDS for s in [(rate >= lo) & (rate < hi)]
        ],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
