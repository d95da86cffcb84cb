"""Recipe schema: the shipped recipes validate, and mistakes are reported with their dotted path."""

from __future__ import annotations

import pytest

from funaudiochat.training.recipes import RecipeError, apply_overrides, load_recipe, recipe_from_dict
from tests.training.tiny_runs import REPO

SHIPPED = sorted((REPO / "recipes").rglob("*.yaml"))

BASE = {"name": "x", "stage": "sft", "model": {"tiny": True}, "data": {"train": ["a.jsonl"]}, "train": {"max_steps": 2}}


def test_every_shipped_recipe_validates():
    names = {p.relative_to(REPO / "recipes").as_posix() for p in SHIPPED}
    expected = {"pre_alignment.yaml", "core_cocktail_stage1.yaml", "core_cocktail_stage2.yaml", "dpo.yaml"}
    assert expected | {f"tiny/{n}" for n in expected} <= names
    for path in SHIPPED:
        load_recipe(path)


def test_paper_values_in_the_full_recipes():
    rec = {n: load_recipe(REPO / "recipes" / f"{n}.yaml") for n in ("pre_alignment", "core_cocktail_stage1", "core_cocktail_stage2", "dpo")}
    assert rec["pre_alignment"].train.freeze == ["language_model."]
    assert (rec["core_cocktail_stage1"].optim.lr_max, rec["core_cocktail_stage1"].optim.lr_min) == (1e-4, 1e-5)
    assert (rec["core_cocktail_stage2"].optim.lr_max, rec["core_cocktail_stage2"].optim.lr_min) == (1e-5, 1e-6)
    assert rec["core_cocktail_stage1"].train.freeze == [] and rec["dpo"].stage == "dpo"


def test_unknown_keys_and_wrong_types_are_all_reported():
    bad = apply_overrides(BASE, ["train.batch_sise=4", "train.grad_accum=two", "optim.lr_max=[1]", "stage=ppo", "modle.x=1"])
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(bad, source="bad.yaml")
    msg = str(err.value)
    assert msg.startswith("bad.yaml: 5 problem(s) in the recipe:")
    assert "train.batch_sise: unknown key" in msg and "did you mean 'batch_size'?" in msg
    assert "train.grad_accum: expected an integer, got str 'two'" in msg
    assert "optim.lr_max: expected a number, got list [1]" in msg
    assert "stage: expected one of 'sft', 'dpo', 'duplex', 'ctc', got 'ppo'" in msg
    assert "modle: unknown key" in msg


def test_cross_field_checks():
    with pytest.raises(RecipeError, match="give exactly one of max_steps and epochs"):
        recipe_from_dict(apply_overrides(BASE, ["train.epochs=1"]))
    with pytest.raises(RecipeError, match=r"model: give exactly one of path, from_parts, tiny \(got \['path', 'tiny'\]\)"):
        recipe_from_dict(apply_overrides(BASE, ["model.path=/x"]))
    with pytest.raises(RecipeError, match=r"optim.lr_min: must be in \[0, lr_max=0.0001\], got 0.001"):
        recipe_from_dict(apply_overrides(BASE, ["optim.lr_max=1e-4", "optim.lr_min=1e-3"]))
    with pytest.raises(RecipeError, match="train.new_token_rows: must be a token id >= 1 or null, got 0"):
        recipe_from_dict(apply_overrides(BASE, ["train.new_token_rows=0"]))
    with pytest.raises(RecipeError, match="the ctc stage does not run the backbone, so its embeddings would not train"):
        recipe_from_dict(apply_overrides(BASE, ["stage=ctc", "train.new_token_rows=5"]))
    with pytest.raises(RecipeError, match="name: missing"):
        recipe_from_dict({k: v for k, v in BASE.items() if k != "name"})
    with pytest.raises(RecipeError, match="data.group_by_length: must be a whole number of batches >= 0, got -2"):
        recipe_from_dict(apply_overrides(BASE, ["data.group_by_length=-2"]))
    with pytest.raises(RecipeError, match="the duplex stage's items have no length estimate"):
        recipe_from_dict(apply_overrides(BASE, ["stage=duplex", "data.group_by_length=8"]))
    assert recipe_from_dict(apply_overrides(BASE, ["stage=ctc", "data.group_by_length=8"])).data.group_by_length == 8


def test_overrides_are_yaml_and_1e_minus_4_is_a_float():
    r = recipe_from_dict(apply_overrides(BASE, ["optim.lr_max=1e-4", "data.train=[a.jsonl, b.jsonl]", "train.lora.r=4"]))
    assert r.optim.lr_max == 1e-4 and isinstance(r.optim.lr_max, float)
    assert r.data.train == ["a.jsonl", "b.jsonl"]
    assert r.train.lora.r == 4 and "q_proj" in r.train.lora.target_modules
    with pytest.raises(ValueError, match="--set expects KEY=VALUE"):
        apply_overrides(BASE, ["train.max_steps"])
    with pytest.raises(ValueError, match="train.max_steps is not a mapping"):
        apply_overrides(BASE, ["train.max_steps.x=1"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(RecipeError, match="top level must be a mapping"):
        load_recipe(tmp_path / "list.yaml")
