"""The ``funaudiochat`` command.

Results go to stdout; logs and progress go to stderr, so output can be piped.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

logger = logging.getLogger("funaudiochat")


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * verbosity
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def _cmd_inspect(args: argparse.Namespace) -> int:
    """Load (or build) a model, print its layout and run one forward pass on a synthetic conversation."""
    import torch

    from funaudiochat.config import tiny_config
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.testing import synthetic_batch

    if args.model:
        logger.warning("loading %s", args.model)
        model = FunAudioChatForConditionalGeneration.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    else:
        torch.manual_seed(0)
        model = FunAudioChatForConditionalGeneration(tiny_config(group_size=args.group_size))
    model.eval()
    cfg = model.config
    parts = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in model.named_children()
        if module is not None
    }
    report: dict = {
        "model_type": cfg.model_type,
        "backbone": cfg.text_config.model_type,
        "group_size": cfg.audio_config.group_size,
        "grouping_mode": cfg.audio_config.grouping_mode,
        "parameters": parts,
        "parameters_total": sum(p.numel() for p in model.parameters()),
        "special_ids": {
            "<|AUDIO|>": cfg.audio_token_index,
            "<|audio_bos|>": cfg.audio_bos_id,
            "<|audio_eos|>": cfg.audio_eos_id,
            "<|sil|>": cfg.sil_id,
        },
    }
    if not args.no_forward:
        batch = synthetic_batch(cfg, batch_size=1, user_seconds=2.0, answer_seconds=2.0)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        if batch["input_features"].dtype.is_floating_point:
            batch["input_features"] = batch["input_features"].to(model.dtype)
        with torch.no_grad():
            out = model(**batch)
        report["forward"] = {
            "input_ids": list(batch["input_ids"].shape),
            "text_logits": list(out.logits.shape),
            "speech_logits": list(out.speech_logits.shape),
            "text_loss": round(float(out.text_loss), 4),
            "speech_loss": round(float(out.speech_loss), 4),
        }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a model's layout and run one forward pass",
        description="Load a checkpoint directory (or build the tiny test model), print its parameter "
        "counts per module and special-token ids as JSON, and run one forward pass on a synthetic "
        "spoken conversation to show the losses and tensor shapes.",
    )
    p.add_argument("--model", help="checkpoint directory (safetensors); default: a random tiny model")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype (default float32)")
    p.add_argument("--group-size", type=int, default=5, help="k for the tiny model (default 5: 25 Hz -> 5 Hz)")
    p.add_argument("--no-forward", action="store_true", help="only print the layout")
    p.set_defaults(func=_cmd_inspect)


#: Subcommands whose arguments (``--help`` included) belong to another module's ``main(argv)``.
DELEGATED: dict[str, tuple[str, str]] = {
    "synth-data": (
        "speak a JSONL of texts with offline TTS, keeping what local Whisper understands",
        "funaudiochat.speech.synthesize:main",
    ),
}


def _add_delegated(sub: argparse._SubParsersAction) -> None:
    for name, (help_text, _target) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)


def _run_delegated(name: str, argv: Sequence[str]) -> int:
    module, func = DELEGATED[name][1].split(":")
    return int(getattr(importlib.import_module(module), func)(list(argv)) or 0)


def _commands() -> tuple[Callable[[argparse._SubParsersAction], None], ...]:
    from funaudiochat.chat import add_chat_parser, add_demo_parser
    from funaudiochat.default_model.cli import add_build_parser
    from funaudiochat.evaluation.cli import add_eval_parser
    from funaudiochat.serving.cli import add_serve_parser
    from funaudiochat.training.cli import add_merge_parser, add_train_parser
    from funaudiochat.training.speech_tokens import add_tokenize_parser

    return (
        add_demo_parser, add_chat_parser, add_serve_parser, add_train_parser, add_merge_parser, add_eval_parser,
        add_tokenize_parser, add_build_parser, _add_delegated, _add_inspect,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="funaudiochat",
        description="Fun-Audio-Chat: a speech-text LLM for voice conversation.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _commands():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _run_delegated(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: say what is wrong, no traceback
        logger.error("%s", err)
        return 2


#: Commands that leave nothing running or unwritten when they return, so their process may end at once.
QUICK_EXIT = frozenset({"demo", "chat"})


def run() -> None:
    """The console script: :func:`main`, then, for :data:`QUICK_EXIT` commands, an immediate exit.

    Tearing the interpreter down after torch and transformers were imported takes 0.7-0.9 s on a
    2-core machine, a tenth of a warm demo.  By then these commands have closed their files; the exit
    handlers (logging's flush, a coverage tool's save) run and stdout is flushed here, so only the
    teardown of the modules is skipped.  ``python -m funaudiochat.cli`` exits normally, for profilers.
    """
    argv = sys.argv[1:]
    code = main(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in QUICK_EXIT:
        atexit._run_exitfuncs()  # what a normal exit runs first; they are not run twice
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # a closed pipe: let the normal exit report it
            sys.exit(code)
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
