"""Runs a tiny recipe and SIGKILLs itself right after optimizer step ``--kill-at`` (used by test_train_resume).

Usage: python train_kill_worker.py RECIPE_NAME DATA OUT --kill-at N [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.training.tiny_runs import tiny_recipe  # noqa: E402


def main() -> None:
    from funaudiochat.training.trainer import train

    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--kill-at", type=int, required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    def kill(step: int, _state) -> None:
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: like a node failure

    train(tiny_recipe(args.recipe, Path(args.data), Path(args.out), *args.set), callbacks=[kill])


if __name__ == "__main__":
    main()
