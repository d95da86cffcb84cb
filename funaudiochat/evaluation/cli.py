"""``funaudiochat eval`` and ``funaudiochat eval-report`` (``eval-duplex`` lives in ``evaluation/duplex.py``).

The result table goes to stdout; logs and tqdm progress go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from funaudiochat.chat import add_speech_sampling_arguments, speech_sampling
from funaudiochat.evaluation.report import RunResult, SetSummary, load_run_json, write_comparison_report

logger = logging.getLogger(__name__)

__all__ = ["add_eval_parser", "cmd_eval", "cmd_eval_report", "format_table"]


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def format_table(summary: Sequence[SetSummary]) -> str:
    """Plain Markdown table of a run's summary (values in %)."""
    lines = ["| set | mode | metric | n | scored | value (%) |", "|---|---|---|---:|---:|---:|"]
    for s in summary:
        value = "n/a" if s.value is None else f"{100 * s.value:.2f}"
        lines.append(f"| {s.set} | {s.mode} | {s.metric} | {s.n} | {s.n_scored} | {value} |")
    return "\n".join(lines)


def read_ids(path: str) -> frozenset[str]:
    """Ids from a JSONL file (each line's ``id``) or a text file (one id per line)."""
    ids = set()
    # split on "\n" only: JSON strings may hold U+2028 and other characters splitlines() breaks on
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                ids.add(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: expected a JSON object with an 'id' ({err})") from err
        else:
            ids.add(line)
    return frozenset(ids)


def _speech_sampling(args: argparse.Namespace):
    """The options' speech sampling, or None for the engine's default (so older runs still resume)."""
    from funaudiochat.generation.sampling import DEFAULT_SPEECH_SAMPLING

    sampling = speech_sampling(args)
    return None if sampling == DEFAULT_SPEECH_SAMPLING else sampling


def cmd_eval(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from funaudiochat.evaluation.runner import RUN_JSON, REPORT_MD, EvalConfig, EvalRunner

    config = EvalConfig(
        model=args.model, sets=_csv(args.sets), out=Path(args.out), modes=_csv(args.modes),
        data_root=Path(args.data_root) if args.data_root else None, split=args.split,
        audio_root=Path(args.audio_root) if args.audio_root else None, limit=args.limit,
        batch_size=args.batch_size, max_seconds=args.max_seconds, repetition_penalty=args.repetition_penalty,
        tts=_csv(args.tts), asr=args.asr,
        tts_cache=Path(args.tts_cache) if args.tts_cache else None, tts_max_wer=args.tts_max_wer, judge=args.judge,
        detokenizer=args.detokenizer, detokenizer_path=args.detokenizer_path, dtype=args.dtype,
        device=args.device, seed=args.seed, run_name=args.name, save_audio=args.save_audio,
        progress=not args.no_progress, exclude_ids=read_ids(args.exclude_ids) if args.exclude_ids else frozenset(),
        speech_sampling=_speech_sampling(args),
    )
    result: RunResult = EvalRunner(config).run()
    out = out or sys.stdout
    out.write(format_table(result.summary) + "\n")
    out.flush()
    logger.warning("wrote %s and %s", Path(args.out) / RUN_JSON, Path(args.out) / REPORT_MD)
    return 0


def _run_file(path: str) -> Path:
    from funaudiochat.evaluation.runner import RUN_JSON

    p = Path(path)
    return p / RUN_JSON if p.is_dir() else p


def cmd_eval_report(args: argparse.Namespace, out: TextIO | None = None) -> int:
    runs = [load_run_json(_run_file(p)) for p in args.runs]
    md = write_comparison_report(runs, args.out, chart=not args.no_chart)
    out = out or sys.stdout
    out.write(md.read_text(encoding="utf-8").split("\n![")[0].rstrip() + "\n")
    logger.warning("wrote %s", md)
    return 0


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``eval``, ``eval-report`` and ``eval-duplex`` on the ``funaudiochat`` subcommands."""
    p = sub.add_parser(
        "eval",
        help="run a model over benchmark sets and score it",
        description="Generate answers for benchmark sets (text, speech-to-text and speech-to-speech modes), score "
        "them with the benchmark checkers and write RUN_DIR/run.json, RUN_DIR/report.md and a per-item log that "
        "lets an interrupted run resume. Sets without audio are spoken by the offline TTS first.",
    )
    p.add_argument("--model", default="default",
                   help="checkpoint directory, or 'default' for the embedded funaudiochat-tiny")
    p.add_argument("--exclude-ids",
                   help="skip these item ids (a JSONL file with an 'id' per line, such as the default model's "
                   "build questions.jsonl, or one id per line): never score a model on what it was trained on")
    p.add_argument("--sets", required=True,
                   help="comma list of set names under the data root (or paths to JSONL files)")
    p.add_argument("--modes", default="text,s2t", help="comma list from text, s2t, s2s (default text,s2t)")
    p.add_argument("--out", required=True, help="run folder (re-run with the same one to resume)")
    p.add_argument("--limit", type=int, default=None, help="only the first N items of each set")
    p.add_argument("--batch-size", type=int, default=8, help="conversations decoded together (default 8)")
    p.add_argument("--data-root", default=None,
                   help="benchmark folder (default $FUNAUDIOCHAT_BENCHDATA, else ../shared/benchdata)")
    p.add_argument("--split", default="dev", help="file name of each set without .jsonl (default dev)")
    p.add_argument("--audio-root", default=None, help="extra folder in which to look for records' audio_file")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="longest reply; one step (= one text token) is 0.2 s (default 60 = 300 steps)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="text repetition penalty of the greedy decoding (default 1.0 = off, as in chat)")
    p.add_argument("--tts", default="piper,espeak",
                   help="offline TTS engines for sets without audio, comma list from piper, espeak; an utterance that "
                   "fails the ASR-WER check is retried with another voice (default piper,espeak)")
    p.add_argument("--asr", choices=("base", "tiny.en"), default="base",
                   help="Whisper model for the TTS check and for transcribing spoken answers (default base)")
    p.add_argument("--tts-max-wer", type=float, default=0.2,
                   help="keep a synthesized question only if Whisper's transcript has a WER below this (default 0.2); "
                   "items with no accepted voice are skipped and counted in the report")
    p.add_argument("--tts-cache", default=None, help="folder for synthesized questions (default RUN_DIR/tts)")
    p.add_argument("--judge", default=None,
                   help="causal LM directory used as a local judge for open-ended sets (an approximation of "
                   "AlpacaEval's GPT-4 judge); without it those answers are saved but not scored")
    p.add_argument("--detokenizer", choices=("flow", "cosyvoice"), default="flow",
                   help="speech detokenizer for s2s mode: the embedded flow model (default) or CosyVoice3, which the "
                   "released 8B's 6561-token codebook needs")
    p.add_argument("--detokenizer-path", default=None, help="detokenizer folder (required for cosyvoice)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="weights dtype")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of each conversation (speech sampling)")
    add_speech_sampling_arguments(p.add_argument_group("speech sampling (s2s mode)"))
    p.add_argument("--name", default=None, help="run name in reports (default: the run folder's name)")
    p.add_argument("--save-audio", action="store_true", help="keep the spoken answers of s2s mode as wavs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=cmd_eval)

    r = sub.add_parser(
        "eval-report",
        help="compare evaluation runs in one table",
        description="Read several run folders (or run.json files) and write one Markdown table with a column per "
        "run, plus a grouped bar chart next to it, e.g. to compare training stages.",
    )
    r.add_argument("runs", nargs="+", help="run folders or run.json files")
    r.add_argument("--out", required=True, help="Markdown file to write (the chart goes next to it as .png)")
    r.add_argument("--no-chart", action="store_true", help="table only")
    r.set_defaults(func=cmd_eval_report)

    from funaudiochat.evaluation.duplex import add_eval_duplex_parser

    add_eval_duplex_parser(sub)
