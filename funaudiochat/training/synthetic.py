"""Synthetic conversation datasets in the JSONL format, for tests and for trying recipes on the tiny model.

User turns are short random waveforms (written as 16-bit wav files next to the JSONL) with a text
question; assistant turns are text from the tiny tokenizer's vocabulary plus random S3 speech tokens.
Deterministic for a given seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import numpy as np

from funaudiochat.audio.io import SAMPLE_RATE, save_wav
from funaudiochat.training.data import DPO_TASKS, SPEECH_VOCAB_SIZE

_WORDS = (
    "the capital of france is paris water boils at one hundred degrees celsius the sky is blue a spider "
    "has eight legs the largest planet is jupiter hello hi thanks please tell me about you"
).split()


def _sentence(rng: np.random.Generator, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS, size=int(rng.integers(lo, hi + 1))))


def write_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    n: int = 8,
    kind: Literal["sft", "dpo"] = "sft",
    seed: int = 0,
    user_seconds: tuple[float, float] = (0.4, 1.0),
    speech_tokens: tuple[int, int] = (25, 40),
    spoken_fraction: float = 0.75,
    name: str | None = None,
) -> Path:
    """Write ``n`` records to ``out_dir/<name or kind>.jsonl`` (audio under ``out_dir/wav``); returns the path.

    A fraction ``spoken_fraction`` of the replies are spoken (transcript + speech tokens), the rest text
    only, so both the text-only and the speech path of the model are exercised.  DPO records cycle
    through the paper's four task tags; their rejected reply is a different random sentence.
    """
    if kind not in ("sft", "dpo"):
        raise ValueError(f"kind must be 'sft' or 'dpo', got {kind!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out_dir)
    wav_dir = out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def reply() -> dict:
        turn = {"role": "assistant", "content": _sentence(rng, 2, 6)}
        if rng.random() < spoken_fraction:
            count = int(rng.integers(speech_tokens[0], speech_tokens[1] + 1))
            turn["speech_tokens"] = rng.integers(0, SPEECH_VOCAB_SIZE, size=count).tolist()
        return turn

    path = out / f"{name or kind}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            seconds = float(rng.uniform(*user_seconds))
            wave = (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
            wav = wav_dir / f"{kind}-{seed}-{i:04d}.wav"
            save_wav(wav, np.clip(wave, -1.0, 1.0))
            user = {"role": "user", "audio": str(wav.relative_to(out)), "content": _sentence(rng, 2, 5)}
            record: dict = {"id": f"{kind}-{i}"}
            if kind == "sft":
                record["messages"] = [user, reply()]
            else:
                chosen = reply()
                rejected = dict(chosen, content=_sentence(rng, 2, 6))
                if "speech_tokens" in rejected:
                    rejected["speech_tokens"] = rng.integers(0, SPEECH_VOCAB_SIZE, size=len(chosen["speech_tokens"])).tolist()
                record.update(task=DPO_TASKS[i % len(DPO_TASKS)], messages=[user], chosen=chosen, rejected=rejected)
            fh.write(json.dumps(record) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m funaudiochat.training.synthetic OUT_DIR [--kind sft|dpo] [-n 8] [--seed 0]``."""
    import argparse

    parser = argparse.ArgumentParser(description="Write a synthetic conversation JSONL (and its wavs).")
    parser.add_argument("out_dir")
    parser.add_argument("--kind", choices=["sft", "dpo"], default="sft")
    parser.add_argument("-n", type=int, default=8, help="number of records (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_synthetic_dataset(args.out_dir, n=args.n, kind=args.kind, seed=args.seed))


if __name__ == "__main__":
    main()
