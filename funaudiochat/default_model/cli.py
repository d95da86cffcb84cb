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
    logger.info("stage times (s): %s", res.timings)
    if args.ablation_no_merge:
        from funaudiochat.default_model.build import run_no_merge_ablation

        times = run_no_merge_ablation(work, smoke=args.smoke)
        logger.info("no-merge ablation in %s: %s", work / "runs_nomerge", times)
    print(res.out_dir)
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
    p.add_argument("--ablation-no-merge", action="store_true",
                   help="afterwards, train stage 2 and DPO again from stage 1 without the merge "
                   "(into WORK/runs_nomerge; not shipped, for the Core-Cocktail ablation)")
    p.set_defaults(func=_cmd_build)
