"""The paper's stages end to end on the tiny model: pre-alignment -> Core-Cocktail stage 1 -> merge ->
stage 2 -> multi-task DPO, each from its shipped recipe in recipes/tiny/."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from funaudiochat.training.schedules import WarmupCosine
from funaudiochat.training.synthetic import write_synthetic_dataset
from tests.training.tiny_runs import split, tiny_recipe, weights

STAGES = ("pre_alignment", "core_cocktail_stage1", "core_cocktail_stage2", "dpo")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from funaudiochat.training.cli import main as cli_main
    from funaudiochat.training.model_setup import build_model
    from funaudiochat.training.recipes import ModelSection
    from funaudiochat.training.trainer import train

    root = tmp_path_factory.mktemp("pipeline")
    sft = write_synthetic_dataset(root / "data", n=8, kind="sft", seed=0)
    dpo = write_synthetic_dataset(root / "data", n=8, kind="dpo", seed=1)
    runs = root / "runs"
    init, _ = build_model(ModelSection(tiny=True))
    out = {"init": {k: v.detach().clone() for k, v in init.state_dict().items()}, "times": {}, "recipes": {}}

    def run(name, data, *overrides):
        recipe = tiny_recipe(name, data, runs / name, *overrides)
        start = time.perf_counter()
        result = train(recipe)
        out["times"][name] = time.perf_counter() - start
        out["recipes"][name] = recipe
        out[name] = result
        return result

    pa = run("pre_alignment", sft)
    s1 = run("core_cocktail_stage1", sft, f"model.path={pa.final_dir}")
    merged = runs / "merged"
    assert cli_main(["merge", "--base", str(pa.final_dir), "--tuned", str(s1.final_dir), "--alpha", "0.5", "--out", str(merged)]) == 0
    out["merged"] = merged
    s2 = run("core_cocktail_stage2", sft, f"model.path={merged}")
    run("dpo", dpo, f"model.path={s2.final_dir}")
    print("tiny recipe wall times (s):", {k: round(v, 2) for k, v in out["times"].items()})
    return out


def _metrics(result):
    return [json.loads(line) for line in result.metrics_path.read_text().splitlines()]


def test_pre_alignment_freezes_the_backbone_and_trains_the_rest(pipeline):
    final = weights(pipeline["pre_alignment"].final_dir)
    init = pipeline["init"]
    lm, rest = split(final, "language_model.")
    assert lm and all(torch.equal(v, init[k]) for k, v in lm.items()), "the frozen LLM changed"
    for prefix in ("audio_invert_tower.", "continuous_audio_tower.proj.", "audio_tower.", "continuous_audio_tower.layers."):
        changed = [k for k, v in rest.items() if k.startswith(prefix) and not torch.equal(v, init[k])]
        assert changed, f"no parameter under {prefix} was trained"


def test_stage1_trains_the_backbone(pipeline):
    before = weights(pipeline["pre_alignment"].final_dir)
    after = weights(pipeline["core_cocktail_stage1"].final_dir)
    changed = [k for k in after if k.startswith("language_model.") and not torch.equal(after[k], before[k])]
    assert len(changed) == sum(k.startswith("language_model.") for k in after)


def test_merge_is_exactly_the_halfway_point(pipeline):
    base = weights(pipeline["pre_alignment"].final_dir)
    tuned = weights(pipeline["core_cocktail_stage1"].final_dir)
    merged = weights(pipeline["merged"])
    assert merged.keys() == tuned.keys()
    for k, v in merged.items():
        if k.startswith("language_model."):
            assert torch.equal(v, (0.5 * tuned[k].float() + 0.5 * base[k].float()).to(v.dtype)), k
        else:
            assert torch.equal(v, tuned[k]), k


def test_stage2_continues_from_the_merged_model(pipeline):
    merged = weights(pipeline["merged"])
    stage1 = weights(pipeline["core_cocktail_stage1"].final_dir)
    stage2 = weights(pipeline["core_cocktail_stage2"].final_dir)
    keys = [k for k in merged if k.startswith("language_model.")]
    from_merged = math.sqrt(sum(float((stage2[k] - merged[k]).pow(2).sum()) for k in keys))
    from_stage1 = math.sqrt(sum(float((stage2[k] - stage1[k]).pow(2).sum()) for k in keys))
    assert 0 < from_merged < 0.5 * from_stage1
    # 6 AdamW steps at lr <= 1e-5 cannot move a weight by more than a few 1e-5 (|update| <~ 3 lr)
    assert max(float((stage2[k] - merged[k]).abs().max()) for k in keys) < 6 * 3.2e-5


def test_cosine_schedule_hits_its_end_points(pipeline):
    for name in STAGES:
        recipe = pipeline["recipes"][name]
        rows = _metrics(pipeline[name])
        lrs = [r["lr"] for r in rows]
        steps = recipe.train.max_steps
        assert [r["step"] for r in rows] == list(range(1, steps + 1))
        assert lrs[0] == pytest.approx(recipe.optim.lr_max, rel=1e-12)
        assert lrs[-1] == pytest.approx(recipe.optim.lr_min, rel=1e-12)
        curve = WarmupCosine(0, steps - 1, recipe.optim.lr_max, recipe.optim.lr_min)
        assert lrs == pytest.approx([curve.lr(s) for s in range(steps)], rel=1e-9)
        assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_metrics_plots_and_final_folder(pipeline):
    from transformers import AutoTokenizer

    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration

    for name in STAGES:
        result = pipeline[name]
        rows = _metrics(result)
        for key in ("loss", "text_loss", "speech_loss", "lr", "tokens_per_s", "grad_norm"):
            assert all(isinstance(r[key], float) and math.isfinite(r[key]) for r in rows), (name, key)
        assert (result.output_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (result.output_dir / "recipe.yaml").is_file()
        # the pre-alignment recipe checkpoints every 3 of 6 steps, keeping the last 3
        assert list((result.output_dir / "checkpoints").glob("checkpoint-*"))
    sft_rows = _metrics(pipeline["pre_alignment"])
    for r in sft_rows:  # loss = text_loss + speech_loss (weights 1)
        assert r["loss"] == pytest.approx(r["text_loss"] + r["speech_loss"], rel=1e-5)
    final = pipeline["core_cocktail_stage1"].final_dir
    model = FunAudioChatForConditionalGeneration.from_pretrained(final)  # strict: every key present
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.convert_tokens_to_ids("<|AUDIO|>") == model.config.audio_token_index


def test_dpo_logs_per_task_metrics(pipeline):
    from funaudiochat.training.data import DPO_TASKS

    rows = _metrics(pipeline["dpo"])
    batch = pipeline["recipes"]["dpo"].train.batch_size
    # step 1: the policy equals the frozen reference, so every reward is 0 and the loss log 2
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-6)
    seen = set()
    for r in rows:
        assert set(r["tasks"]) <= set(DPO_TASKS)
        assert sum(t["count"] for t in r["tasks"].values()) == batch
        for stats in r["tasks"].values():
            assert {"loss", "accuracy", "margin", "chosen_reward", "rejected_reward"} <= set(stats)
        seen |= set(r["tasks"])
    assert seen == set(DPO_TASKS)
    # a few steps on 8 pairs should separate chosen from rejected
    assert rows[-1]["margin"] > 0 and rows[-1]["loss"] < math.log(2)
