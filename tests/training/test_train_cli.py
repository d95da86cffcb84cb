"""The train/merge subcommands' argument handling (the engine itself is covered by the other tests)."""

from __future__ import annotations

import argparse
import json

import pytest

from funaudiochat.training.cli import add_merge_parser, add_train_parser, main
from funaudiochat.training.synthetic import write_synthetic_dataset
from tests.training.tiny_runs import TINY


def test_parsers_plug_into_a_parent_parser():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_train_parser(sub)
    add_merge_parser(sub)
    args = parser.parse_args(["train", "r.yaml", "--set", "a=1", "--set", "b=2", "--resume"])
    assert (args.recipe, args.set, args.resume, callable(args.func)) == ("r.yaml", ["a=1", "b=2"], True, True)
    args = parser.parse_args(["merge", "--base", "B", "--tuned", "T", "--out", "M", "--base-llm"])
    assert (args.base, args.tuned, args.out, args.alpha, args.base_llm) == ("B", "T", "M", 0.5, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["merge", "--base", "B", "--out", "M"])  # --tuned is required


def test_train_check_validates_recipe_and_data(tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path, n=3, kind="dpo", seed=1)
    assert main(["train", str(TINY / "dpo.yaml"), "--set", f"data.train=[{data}]", "--check"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 3 and report["recipe"]["stage"] == "dpo"
    from funaudiochat.training.dataset import DatasetError

    with pytest.raises(DatasetError, match=r"(?s)6 problem.*dpo.jsonl:1: messages\[1\].role: the prompt of a DPO record must end with a user turn.*dpo.jsonl:2: chosen: missing"):
        # an SFT file is not preference data
        sft = write_synthetic_dataset(tmp_path, n=2, kind="sft", seed=1, name="dpo")
        main(["train", str(TINY / "dpo.yaml"), "--set", f"data.train=[{sft}]", "--check"])
