"""Trainer options: LoRA on the backbone, gradient checkpointing, data-order planning, epochs."""

from __future__ import annotations

import pytest
import torch

from funaudiochat.training.checkpoint import ResumableSampler
from funaudiochat.training.synthetic import write_synthetic_dataset
from funaudiochat.training.trainer import RankBatchSampler, draw, total_steps, train
from tests.training.tiny_runs import tiny_recipe, weights

FAST = ["train.max_steps=2", "output.plots=false", "train.freeze=[]", "optim.lr_max=1e-3", "optim.lr_min=1e-4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), n=6, kind="sft", seed=9)


def _init_weights():
    from funaudiochat.training.model_setup import build_model
    from funaudiochat.training.recipes import ModelSection

    return {k: v.detach().clone() for k, v in build_model(ModelSection(tiny=True))[0].state_dict().items()}


def test_lora_trains_only_adapters_in_the_backbone_and_merges_them(tmp_path, data):
    pytest.importorskip("peft")
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.training.trainer import train

    result = train(tiny_recipe("pre_alignment", data, tmp_path / "lora", *FAST, "train.lora.r=4",
                               "train.lora.target_modules=[q_proj, v_proj]"))
    init, final = _init_weights(), weights(result.final_dir)
    # adapters folded in: a plain checkpoint (save_pretrained leaves out the SRH head tied to the embedding)
    assert set(final) == set(init) - {"audio_invert_tower.lm_head.weight"}
    for k, v in final.items():
        if k.startswith("language_model."):
            targeted = ".q_proj." in k or ".v_proj." in k
            assert torch.equal(v, init[k]) != targeted, k  # exactly the LoRA targets changed
    assert not torch.equal(final["audio_tower.embed_tokens.weight"], init["audio_tower.embed_tokens.weight"])
    FunAudioChatForConditionalGeneration.from_pretrained(result.final_dir)  # strict load


@pytest.mark.parametrize("lora", [False, True])
def test_new_token_rows_train_while_the_rest_of_the_backbone_stays_fixed(tmp_path, data, lora):
    """The tiny backbone's 5 added tokens are ids 507-511 (untied head: both tables hold them); weight
    decay is on, so an old row that were decayed would move."""
    opts = ["train.new_token_rows=507", "optim.weight_decay=0.5"]
    if lora:  # LoRA on the backbone (stage 1); otherwise the backbone is frozen (pre-alignment)
        pytest.importorskip("peft")
        opts += ["train.lora.r=4", "train.lora.target_modules=[q_proj]"]
    else:
        opts += ["train.freeze=[language_model.]"]
    result = train(tiny_recipe("pre_alignment", data, tmp_path / "run", *FAST, *opts))
    init, final = _init_weights(), weights(result.final_dir)
    for table in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        assert torch.equal(final[table][:507], init[table][:507]), table
        changed = (final[table][507:] != init[table][507:]).any(-1)
        assert bool(changed[508 - 507]), table  # <|audio_bos|> is in every assistant turn
    for k, v in final.items():
        if k.startswith("language_model.") and "embed_tokens" not in k and "lm_head" not in k:
            assert torch.equal(v, init[k]) != (lora and ".q_proj." in k), k


def test_new_token_rows_outside_the_table_is_an_error(tmp_path, data):
    with pytest.raises(ValueError, match="train.new_token_rows: 600 is not a row of the 512-token embedding table"):
        train(tiny_recipe("pre_alignment", data, tmp_path / "run", *FAST, "train.new_token_rows=600"))


def test_gradient_checkpointing_gives_the_same_weights(tmp_path, data):
    from funaudiochat.training.trainer import train

    plain = train(tiny_recipe("pre_alignment", data, tmp_path / "plain", *FAST))
    ckpt = train(tiny_recipe("pre_alignment", data, tmp_path / "gc", *FAST, "train.gradient_checkpointing=true"))
    a, b = weights(plain.final_dir), weights(ckpt.final_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


def test_rank_batches_partition_each_global_batch():
    sampler = ResumableSampler(10, seed=3)
    one = list(RankBatchSampler(sampler, steps=4, batch_size=2, grad_accum=2, rank=0, world=1))
    two = [list(RankBatchSampler(sampler, steps=4, batch_size=2, grad_accum=1, rank=r, world=2)) for r in range(2)]
    # micro-step m of rank r holds slice (m * world + r) of the global batch
    assert [b for pair in zip(two[0], two[1]) for b in pair] == one
    reference = ResumableSampler(10, seed=3)
    flat = [i for b in one for i in b]
    assert flat == draw(reference, 16)  # crosses the epoch boundary at 10
    assert flat[:10] == reference.order(0) and flat[10:] == reference.order(1)[:6]
    assert (reference.state.epoch, reference.state.position) == (1, 6)


def test_rank_batches_follow_the_length_grouped_order():
    lengths = [float(n) for n in (9, 1, 8, 2, 7, 3, 6, 4, 5, 10)]
    sampler = ResumableSampler(10, seed=1, lengths=lengths, group=4)
    batches = list(RankBatchSampler(sampler, steps=10, batch_size=2, grad_accum=1, rank=0, world=1))
    flat = [i for b in batches for i in b]
    assert flat == sampler.order(0) + sampler.order(1)
    windows = [flat[:4], flat[4:8]]  # longest first, then shortest first
    assert [lengths[i] for i in windows[0]] == sorted((lengths[i] for i in windows[0]), reverse=True)
    assert [lengths[i] for i in windows[1]] == sorted(lengths[i] for i in windows[1])


def test_a_length_grouped_run_resumes_only_with_the_same_grouping(tmp_path, data):
    def halt(step, _state):
        if step == 2:
            raise KeyboardInterrupt

    grouped = [*FAST, "train.max_steps=4", "output.save_every=2", "data.group_by_length=2"]
    with pytest.raises(KeyboardInterrupt):
        train(tiny_recipe("pre_alignment", data, tmp_path / "run", *grouped), callbacks=[halt])
    with pytest.raises(ValueError, match=r"group=4, but this sampler has .*group=0 .*group_by_length changed"):
        train(tiny_recipe("pre_alignment", data, tmp_path / "run", *grouped[:-1]), resume=True)
    result = train(tiny_recipe("pre_alignment", data, tmp_path / "run", *grouped), resume=True)
    assert result.steps == 4 and result.resumed_from is not None and result.final_dir.is_dir()


def test_epochs_set_the_number_of_steps(data):
    recipe = tiny_recipe("pre_alignment", data, data.parent / "unused", "train.max_steps=null", "train.epochs=1.5")
    assert total_steps(recipe, num_samples=6, world=1) == 5  # ceil(1.5 * 6 / 2)
    assert total_steps(recipe, num_samples=6, world=2) == 3


def test_unknown_freeze_prefix_is_an_error(tmp_path, data):
    from funaudiochat.training.trainer import train

    with pytest.raises(ValueError, match=r"train.freeze: prefix\(es\) \['langauge_model.'\] match no parameter"):
        train(tiny_recipe("pre_alignment", data, tmp_path / "typo", *FAST, "train.freeze=[langauge_model.]"))


@pytest.mark.parametrize("stage", ["pre_alignment", "dpo"])
def test_without_the_speech_loss_the_head_does_not_train(tmp_path, data, stage):
    """``train.speech_loss: false`` leaves the SRH out of the step: its own weights stay as they started,
    the logged loss is the text loss alone, and the rest still trains."""
    import json

    from tests.training.tiny_runs import split

    src, start = data, []
    if stage == "dpo":  # from the tiny model itself rather than a stage-2 run
        src, start = write_synthetic_dataset(tmp_path / "dpo_data", n=4, kind="dpo", seed=3), ["model.path=null", "model.tiny=true"]
    result = train(tiny_recipe(stage, src, tmp_path / "run", *FAST, *start, "train.speech_loss=false"))
    init, final = _init_weights(), weights(result.final_dir)
    # the speech table is the head's output layer too, but the input side still trains it: left out here
    head, rest = split({k: v for k, v in final.items() if k != "audio_tower.embed_tokens.weight"},
                       "audio_invert_tower.")
    assert head and all(torch.equal(v, init[k]) for k, v in head.items())
    assert any(not torch.equal(v, init[k]) for k, v in rest.items())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert steps and all(r.get("speech_loss") is None for r in steps)
    if stage != "dpo":
        assert all(r["loss"] == pytest.approx(r["text_loss"], rel=1e-6) for r in steps)
