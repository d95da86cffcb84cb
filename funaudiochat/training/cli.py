"""``funaudiochat train`` and ``funaudiochat merge`` (registered by ``funaudiochat/cli.py``).

Also runnable on its own, which is what ``accelerate launch`` needs::

    accelerate launch --config_file configs/accelerate/zero2.yaml -m funaudiochat.training.cli train recipes/dpo.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def _cmd_train(args: argparse.Namespace) -> int:
    from funaudiochat.training.recipes import load_recipe

    recipe = load_recipe(args.recipe, args.set or ())
    if args.check:
        from funaudiochat.training.dataset import load_records

        records = load_records(recipe.data.train, recipe.stage, recipe.data.audio_root, recipe.data.allowed_tasks)
        json.dump({"recipe": recipe.to_dict(), "records": len(records)}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from funaudiochat.training.trainer import train

    result = train(recipe, resume=args.resume)
    json.dump({"final": str(result.final_dir), "steps": result.steps, "metrics": str(result.metrics_path)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="run a training stage from a YAML recipe",
        description="Run one training stage (pre-alignment, Core-Cocktail SFT or DPO) described by a YAML "
        "recipe (see recipes/ and docs/training.md). Multi-GPU: accelerate launch -m "
        "funaudiochat.training.cli train RECIPE.",
    )
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set train.max_steps=100 --set output.dir=runs/x (repeatable; "
        "values are YAML)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output.dir")
    p.add_argument("--check", action="store_true", help="validate the recipe and the data, print them, and stop")
    p.set_defaults(func=_cmd_train)


def _cmd_merge(args: argparse.Namespace) -> int:
    from funaudiochat.training.merge import DEFAULT_MAX_SHARD_BYTES, merge_checkpoints

    prefix_map = {"model.": "language_model.model.", "lm_head.": "language_model.lm_head."} if args.base_llm else None
    max_shard = int(args.max_shard_gb * 1024**3) if args.max_shard_gb else DEFAULT_MAX_SHARD_BYTES
    out = merge_checkpoints(
        args.base, args.tuned, args.out, alpha=args.alpha,
        prefixes=tuple(args.prefix or ("language_model.",)), base_prefix_map=prefix_map,
        max_shard_bytes=max_shard, overwrite=args.overwrite,
    )
    json.dump({"merged": str(out), "alpha": args.alpha}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def add_merge_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="Core-Cocktail merge: alpha * tuned + (1 - alpha) * base over the LLM",
        description="Interpolate the language_model.* weights of a tuned checkpoint with a base "
        "(paper eq. 7, alpha 0.5 in Fun-Audio-Chat); other modules, config and tokenizer come from the "
        "tuned checkpoint. The output folder appears atomically.",
    )
    p.add_argument("--base", required=True, help="base checkpoint folder (M_0)")
    p.add_argument("--tuned", required=True, help="tuned checkpoint folder (M_1, e.g. stage-1 final/)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the tuned model (default 0.5)")
    p.add_argument(
        "--base-llm", action="store_true",
        help="base is a plain causal-LM folder (model.* / lm_head.* names), e.g. the original Qwen3",
    )
    p.add_argument("--prefix", action="append", help="parameter prefix to merge (default language_model.; repeatable)")
    p.add_argument("--max-shard-gb", type=float, default=None, help="output shard size (default 4 GiB)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_merge)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="funaudiochat-training", description="Fun-Audio-Chat training commands.")
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_train_parser(sub)
    add_merge_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=max(logging.WARNING - 10 * args.verbose, logging.DEBUG), stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
