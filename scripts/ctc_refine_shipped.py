"""Session 11's experiment: a CTC refinement of the shipped model's speech-in path, the rest kept.

    python scripts/ctc_refine_shipped.py WORK [--vocab-sentences 3000] [--steps 200] [--lr 3e-4]
    funaudiochat train WORK/ctc_refine.yaml --resume
    funaudiochat train WORK/reread_refined.yaml --resume    # optional: with --reread-questions N
    funaudiochat train WORK/reread_shipped.yaml --resume    # the control

The question it answers: the later stages of the session-6 build blurred its CTC readout (42.9 % ->
50.7 % WER on real speech), so does restoring the readout after DPO make the model answer spoken
questions better?  It writes, under WORK:

* ``data/ctc.jsonl``: each build training question spoken as in the build (clean and noisy; the
  answers' recordings are left out, so the slow answers stage is not needed);
* ``data/ctc_vocab.jsonl``: vocabulary sentences chosen against the question texts;
* ``shipped/``: the shipped package written out as a model folder;
* ``ctc_refine.yaml``: the build's CTC stage recipe (same trainable modules, augmentation and
  Whisper lr scale) starting from ``shipped/``;
* with ``--reread-questions N``: the backbone's answers to the first N questions (``answers.jsonl``,
  as the build's answers stage makes them), ``data/reread.jsonl`` (text replies to the clean and the
  noisy recording, and the transcription of the clean one; no speech out) and two LoRA recipes that
  train the backbone on it with the speech-in path frozen: ``reread_refined.yaml`` (after the CTC
  refinement) and ``reread_shipped.yaml`` (the control, from the shipped model).

Nothing here is part of the build; docs/default-model-history.md has the result ("Speech in without a rebuild").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from funaudiochat.default_model.build import DEFAULT_BENCHDATA


def speak_questions(bench: Path, work: Path) -> Path:
    """Clean and noisy recordings of every training question, as ``build_speech_data`` makes them."""
    from funaudiochat.default_model.questions import training_questions, write_questions
    from funaudiochat.default_model.speech_data import (TTSEngines, question_voice, safe_name, speak_cached,
                                                        write_noisy_copy)
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
        write_noisy_copy(wav / f"{name}_q_noisy.wav", clean, q.id)
        rows += [{"id": f"{q.id}:q", "audio": f"wav/{name}_q.wav", "text": q.text},
                 {"id": f"{q.id}:q_noisy", "audio": f"wav/{name}_q_noisy.wav", "text": q.text}]
    path = work / "data" / "ctc.jsonl"
    path.with_suffix(".tmp").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path.with_suffix(".tmp").replace(path)
    load_ctc_records([path])
    return path


def reread_data(work: Path, n: int) -> Path:
    """SFT records that make the backbone read the speech path's output again (text out only)."""
    from funaudiochat.default_model.build import BuildConfig, _answers_stage
    from funaudiochat.default_model.questions import read_questions
    from funaudiochat.default_model.speech_data import ASR_TASK, TEXT_REPLY_TASK, safe_name
    from funaudiochat.prompts import SPEECH_TO_TEXT, TRANSCRIBE_INSTRUCTION
    from funaudiochat.training.data import validate_jsonl

    questions = read_questions(work / "questions.jsonl")[:n]
    answers = _answers_stage(work, questions, BuildConfig())  # the build's answers: cached, batch 32, 40 tokens
    rows = []
    for q in questions:
        name = safe_name(q.id)
        rows += [{"id": f"{q.id}:{kind}:text", "task": TEXT_REPLY_TASK, "messages": [
            {"role": "system", "content": SPEECH_TO_TEXT}, {"role": "user", "audio": f"wav/{name}_{kind}.wav"},
            {"role": "assistant", "content": answers[q.id]}]} for kind in ("q", "q_noisy")]
        rows.append({"id": f"{q.id}:asr", "task": ASR_TASK, "messages": [
            {"role": "system", "content": SPEECH_TO_TEXT},
            {"role": "user", "content": TRANSCRIBE_INSTRUCTION, "audio": f"wav/{name}_q.wav"},
            {"role": "assistant", "content": q.text}]})
    path = work / "data" / "reread.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _, errors = validate_jsonl(path, mode="sft")
    if errors:
        raise SystemExit(f"error: {path} is invalid: {errors[:3]}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path, help="work folder (recordings are cached there)")
    p.add_argument("--benchdata", type=Path, default=DEFAULT_BENCHDATA)
    p.add_argument("--vocab-sentences", type=int, default=3000)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-4, help="peak lr (cosine to a tenth; Whisper layers 0.1x)")
    p.add_argument("--reread-questions", type=int, default=0,
                   help="also write the re-reading data for the first N questions and its recipes (0: none)")
    p.add_argument("--reread-steps", type=int, default=100, help="steps x 8 of each re-reading recipe")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if not args.benchdata.is_dir():
        raise SystemExit(f"error: no benchmark folder at {args.benchdata} (the questions come from its dev splits)")

    import yaml

    from funaudiochat.default_model.build import (CTC_GAIN_DB, CTC_SPEED_RANGE, CTC_TRAINABLE,
                                                  FROZEN_AFTER_CTC, SLOW_ENCODER, StageSpec, _recipe)
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
    if args.reread_questions > 0:
        reread = reread_data(args.work, args.reread_questions)
        for name, model in (("reread_refined", args.work / "runs" / "ctc_refine" / "final"), ("reread_shipped", start)):
            recipe = _recipe(name, StageSpec(args.reread_steps, 1e-4, 1e-5, lora_r=8),
                             {"path": str(model), "dtype": "float32"}, reread, args.work / "runs" / name,
                             seed=21, dpo=False, frozen=list(FROZEN_AFTER_CTC))
            out = args.work / f"{name}.yaml"
            out.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
            print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
