"""``funaudiochat build-default`` command (registered by ``funaudiochat/cli.py``)."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def _cmd_build(args: argparse.Namespace) -> int:
    from funaudiochat.default_model.build import run_build

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="funaudiochat-build-"))
    logger.info("work dir: %s", work)
    res = run_build(args.out, work, smoke=args.smoke, benchdata=args.benchdata)
    print(f"wrote {res.out_dir} (work dir {work}); stage times: {res.timings}")
    return 0


def add_build_parser(sub: argparse._SubParsersAction) -> None:
    from funaudiochat.default_model.build import DEFAULT_BENCHDATA

    p = sub.add_parser("build-default", help="build the embedded default model funaudiochat-tiny",
                       description="Reproducible, resumable build of funaudiochat-tiny (docs/default-model.md).")
    p.add_argument("--out", required=True, help="folder for the shipped weights + manifest.json")
    p.add_argument("--work", default=None, help="work dir for caches and checkpoints (reuse it to resume)")
    p.add_argument("--smoke", action="store_true", help="a handful of items and steps (minutes on a CPU)")
    p.add_argument("--benchdata", default=str(DEFAULT_BENCHDATA),
                   help="benchmark dev data folder; without it built-in questions are used")
    p.set_defaults(func=_cmd_build)
