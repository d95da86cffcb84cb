"""Does the model read the words of user speech?  Transcription loss with the right recording vs others.

    python scripts/probe_speech_reading.py MODEL [--data DEV.jsonl] [--n 24]

MODEL is ``default`` or a ``save_pretrained`` folder.  For each of the first N recordings of a
benchmark set (default: LLaMA-Questions, real human speech), the model is teacher-forced on the
transcription task it was trained on (``SPEECH_TO_TEXT`` prompt, ``TRANSCRIBE_INSTRUCTION``, the
question as the reply) three times: with the right recording, with the next item's recording, and
with silence of the same length.  A model that reads the words has a clearly lower loss with the
right recording; one that only knows "a question follows" has the same loss for all three.  Prints
the mean text loss (nats per token) of each on stdout as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "benchdata" / "llama_questions" / "dev.jsonl"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="'default' or a save_pretrained folder")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="benchmark JSONL with audio_file + question")
    p.add_argument("--n", type=int, default=24, help="recordings to probe (default 24)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    from funaudiochat.audio.io import load_audio
    from funaudiochat.chat import load_engine
    from funaudiochat.processing import Message
    from funaudiochat.prompts import SPEECH_TO_TEXT, TRANSCRIBE_INSTRUCTION

    engine = load_engine(args.model)  # "default" or a folder, as the CLI's --model
    model = engine.model.eval()
    processor = engine.processor
    rows = [json.loads(x) for x in args.data.read_text(encoding="utf-8").split("\n") if x.strip()][: args.n]
    if len(rows) < 2:
        raise SystemExit(f"error: need at least 2 recordings in {args.data}, got {len(rows)}")
    waves = [load_audio(args.data.parent / "audio" / r["audio_file"]) for r in rows]

    def loss(wave: np.ndarray, question: str) -> float:
        example = processor.encode([
            Message("system", SPEECH_TO_TEXT),
            Message("user", TRANSCRIBE_INSTRUCTION, audio=wave),
            Message("assistant", question),
        ])
        with torch.no_grad():
            return float(model(**processor.collate([example])).text_loss)

    sums = {"right": 0.0, "other": 0.0, "silence": 0.0}
    for i, (r, wave) in enumerate(zip(rows, waves)):
        other = waves[(i + 1) % len(rows)]
        sums["right"] += loss(wave, r["question"])
        sums["other"] += loss(np.resize(other, wave.shape), r["question"])  # same length, another question
        sums["silence"] += loss(np.zeros_like(wave), r["question"])
    print(json.dumps({"model": args.model, "n": len(rows), **{k: round(v / len(rows), 3) for k, v in sums.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
