"""Session 11's experiment: a CTC refinement of the shipped model's speech-in path, the rest kept.

    python scripts/ctc_refine_shipped.py WORK [--vocab-sentences 3000] [--steps 200] [--lr 3e-4]
    funaudiochat train WORK/ctc_refine.yaml --resume

The question it answers: the later stages of the session-6 build blurred its CTC readout (42.9 % ->
50.7 % WER on real speech), so does restoring the readout after DPO make the model answer spoken
questions better?  It writes, under WORK:

* ``data/ctc.jsonl``: each build training question spoken as in the build (clean and noisy; the
  answers' recordings are left out, so the slow answers stage is not needed);
* ``data/ctc_vocab.jsonl``: vocabulary sentences chosen against the question texts;
* ``shipped/``: the shipped package written out as a model folder;
* ``ctc_refine.yaml``: the build's CTC stage recipe (same trainable modules, augmentation and
  Whisper lr scale) starting from ``shipped/``.

Nothing here is part of the build; docs/default-model.md has the result ("CTC refinement").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_BENCHDATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "benchdata"


def speak_questions(bench: Path, work: Path) -> Path:
    """Clean and noisy recordings of every training question, as ``build_speech_data`` makes them."""
    from funaudiochat.default_model.questions import training_questions, write_questions
    from funaudiochat.default_model.speech_data import TTSEngines, question_voice, safe_name, speak_cached, stable_hash
    from funaudiochat.speech.audio import add_noise_at_snr, write_wav_atomic
    from funaudiochat.training.ctc import load_ctc_records

    questions = training_questions(bench)
    write_questions(work / "questions.jsonl", questions)
    wav = work / "data" / "wav"
    wav.mkdir(parents=True, exist_ok=True)
    engines, rows = TTSEngines(), []
    for q in questions:
        name = safe_name(q.id)
        engine, voice, speed = question_voice(q.id)
        clean = speak_cached(engines, wav / f"{name}_q.wav", q.text, engine, voice, speed)
        noisy = wav / f"{name}_q_noisy.wav"
        if not noisy.is_file():  # the build's SNR rule (5-15 dB from the id)
            snr = 5.0 + 10.0 * (stable_hash("snr", q.id) % 1000) / 999
            write_wav_atomic(noisy, add_noise_at_snr(clean, snr, seed=stable_hash("noise", q.id) % 2**32), 16000)
        rows += [{"id": f"{q.id}:q", "audio": f"wav/{name}_q.wav", "text": q.text},
                 {"id": f"{q.id}:q_noisy", "audio": f"wav/{name}_q_noisy.wav", "text": q.text}]
    path = work / "data" / "ctc.jsonl"
    path.with_suffix(".tmp").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path.with_suffix(".tmp").replace(path)
    load_ctc_records([path])
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path, help="work folder (recordings are cached there)")
    p.add_argument("--benchdata", type=Path, default=DEFAULT_BENCHDATA)
    p.add_argument("--vocab-sentences", type=int, default=3000)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-4, help="peak lr (cosine to a tenth; Whisper layers 0.1x)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if not args.benchdata.is_dir():
        raise SystemExit(f"error: no benchmark folder at {args.benchdata} (the questions come from its dev splits)")

    import yaml

    from funaudiochat.default_model.build import (CTC_GAIN_DB, CTC_SPEED_RANGE, CTC_TRAINABLE, SLOW_ENCODER,
                                                  StageSpec, _recipe)
    from funaudiochat.default_model.package import load_default_model
    from funaudiochat.default_model.questions import read_questions
    from funaudiochat.default_model.vocab_sentences import build_vocab_speech

    data = [speak_questions(args.benchdata, args.work)]
    texts = [q.text for q in read_questions(args.work / "questions.jsonl")]
    vocab = build_vocab_speech(args.benchdata, texts, args.work, args.vocab_sentences)
    data += [vocab] if vocab else []
    start = args.work / "shipped"
    if not (start / "config.json").is_file():
        model, tokenizer = load_default_model()
        model.save_pretrained(start)
        tokenizer.save_pretrained(start)
    spec = StageSpec(args.steps, args.lr, args.lr / 10, batch_size=16, warmup_ratio=0.05,
                     trainable=list(CTC_TRAINABLE), lr_scale=dict(SLOW_ENCODER),
                     speed_perturb=list(CTC_SPEED_RANGE), gain_db=CTC_GAIN_DB, save_every=50)
    recipe = _recipe("ctc_refine", spec, {"path": str(start), "dtype": "float32"}, data,
                     args.work / "runs" / "ctc_refine", seed=11, dpo=False, stage="ctc")
    out = args.work / "ctc_refine.yaml"
    out.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
