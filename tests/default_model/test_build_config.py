"""Build presets: the GPU preset's stage sizes, and the recipes they write validate."""

from pathlib import Path

import pytest

from funaudiochat.cli import main
from funaudiochat.default_model.build import (
    ADAPTER_PREFIX,
    CTC_STAGE,
    CTC_TRAINABLE,
    DEFAULT_PRESET,
    ENCODER_PREFIX,
    FROZEN_AFTER_CTC,
    SPELLING_PREFIX,
    STAGES,
    BuildConfig,
    write_recipes,
)
from funaudiochat.training.recipes import load_recipe

VOCAB = 49152  # SmolLM2's vocabulary before the audio tokens


def _recipes(*args, **kwargs):
    return write_recipes(*args, original_vocab=VOCAB, **kwargs)



def test_gpu_preset_scales_steps_and_keeps_the_recipe_order():
    cpu, gpu, half = BuildConfig(), BuildConfig.gpu(), BuildConfig.gpu(0.5)
    assert list(gpu.stages) == list(STAGES) == list(cpu.stages)
    assert [s.max_steps for s in gpu.stages.values()] == [1600, 1400, 450, 200]
    assert [s.max_steps for s in half.stages.values()] == [800, 700, 225, 100]
    assert BuildConfig.gpu(1e-6).stages["dpo"].max_steps == 2  # never below 2 steps
    assert gpu.total_lora_rank == 32 and cpu.total_lora_rank == 24
    assert gpu.answer_asr and not cpu.answer_asr  # the shipped CPU build had three records per question
    assert all(s.mixed_precision == "bf16" and s.batch_size >= 16 for s in gpu.stages.values())
    assert all(s.mixed_precision == "no" and s.num_workers == 0 for s in cpu.stages.values())
    assert [bool(s.lr_scale) for s in cpu.stages.values()] == [True, True, False, False]  # slow encoder at high lr
    assert gpu.stages["pre_alignment"].freeze == ["language_model."]
    # the CTC stage hears its few synthetic voices perturbed in both presets
    assert (gpu.ctc.speed_perturb, gpu.ctc.gain_db) == (cpu.ctc.speed_perturb, cpu.ctc.gain_db) != (None, 0.0)
    # the SRH-only stage is off in these presets (on in cpu-base); the smoke build runs it as cpu-base does
    assert cpu.srh is None and gpu.srh is None and BuildConfig.smoke().srh.steps == 2
    assert cpu.joint_speech_loss and gpu.joint_speech_loss and not BuildConfig.smoke().joint_speech_loss


def test_gpu_recipes_validate_with_a_slow_encoder_then_a_frozen_one(tmp_path):
    paths = _recipes(tmp_path, BuildConfig.gpu(0.25), tmp_path / "sft.jsonl", tmp_path / "dpo.jsonl",
                          ctc=tmp_path / "ctc.jsonl")
    for name in (CTC_STAGE, *STAGES):
        r = load_recipe(paths[name])
        assert r.train.mixed_precision == "bf16" and r.data.num_workers == 6
        assert r.output.save_every == r.train.max_steps // 2
        if name == CTC_STAGE:
            assert r.optim.lr_scale[ENCODER_PREFIX] == 0.1 and r.optim.lr_scale[ADAPTER_PREFIX] == 1.0
        else:  # the lr scales named only the frozen encoder, so they go with it
            assert set(FROZEN_AFTER_CTC) <= set(r.train.freeze) and not r.optim.lr_scale
    assert load_recipe(paths["core_cocktail_stage1"]).train.lora.r == 16


@pytest.mark.parametrize("args, message", [
    (["--scale", "2"], "--scale applies to --preset gpu only"),
    (["--preset", "gpu", "--scale", "0"], "--scale must be > 0"),
    (["--preset", "gpu", "--smoke"], "--smoke already sizes every stage"),
    (["--preset", "cpu", "--smoke"], "--smoke already sizes every stage"),
    (["--srh-refine", "-1"], "--srh-refine needs a step count >= 0 \\(0: no SRH stage\\), got -1"),
    (["--smoke", "--srh-refine", "5"], "leave out --srh-refine"),
    (["--steps", "dpo"], "--steps takes STAGE=N with STAGE one of ctc_alignment, pre_alignment, .*, got 'dpo'"),
    (["--steps", "stage3=5"], "--steps takes STAGE=N .* got 'stage3=5'"),
    (["--steps", "dpo=0"], "--steps dpo needs a whole number of steps >= 1, got '0'"),
    (["--steps", "dpo=ten"], "--steps dpo needs a whole number of steps >= 1, got 'ten'"),
    (["--smoke", "--steps", "dpo=5"], "leave out --steps"),
    (["--preset", "cpu", "--srh-prev-scale", "30"], "--srh-prev-scale needs an SRH stage .* got 30.0"),
    (["--srh-refine", "0", "--srh-prev-scale", "30"], "--srh-prev-scale needs an SRH stage .* got 30.0"),
    (["--srh-refine", "5", "--srh-prev-scale", "0"], "--srh-prev-scale needs an SRH stage .* finite value > 0, got 0.0"),
    (["--srh-prev-scale", "inf"], "--srh-prev-scale needs an SRH stage .* finite value > 0, got inf"),
    (["--srh-refine", "0", "--no-joint-speech-loss"], "joint_speech_loss=False needs the SRH stage"),
    (["--preset", "cpu", "--no-joint-speech-loss"], "joint_speech_loss=False needs the SRH stage"),
    (["--vocab-sentences", "-1"], "--vocab-sentences must be >= 0, got -1"),
    (["--read-aloud", "-2"], "--read-aloud must be >= 0, got -2"),
    (["--encoder", "base", "--encoder-trainable-layers", "7"],
     "--encoder-trainable-layers: Whisper base has 6 layers; trainable layers must be 0 to 6, got 7"),
    (["--ctc-spelling-buckets", "-3"], "--ctc-spelling-buckets must be >= 0, got -3"),
    (["--speech-adapter", "linear", "--ctc-spelling-buckets", "64"],
     "--ctc-spelling-buckets: ctc_spelling_buckets needs speech_adapter 'vocab_ctc'"),
])
def test_build_cli_rejects_inconsistent_sizes(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        main(["build-default", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), *args])


def test_the_ctc_stage_comes_first_and_pre_alignment_starts_from_it(tmp_path):
    work, data = tmp_path / "w", tmp_path / "d"
    paths = _recipes(work, BuildConfig(), data / "sft.jsonl", data / "dpo.jsonl", ctc=data / "ctc.jsonl")
    ctc, pre = load_recipe(paths[CTC_STAGE]), load_recipe(paths["pre_alignment"])
    assert ctc.stage == "ctc" and ctc.data.train == [str(data / "ctc.jsonl")]
    assert ctc.model.path == str(work / "init") and ctc.train.trainable == CTC_TRAINABLE
    assert (ctc.train.max_steps, ctc.train.batch_size) == (520, 16) and ctc.train.lora is None
    assert ctc.optim.lr_scale[ENCODER_PREFIX] == 0.1
    assert (ctc.data.speed_perturb, ctc.data.gain_db) == ([0.85, 1.15], 6.0)
    assert pre.data.speed_perturb is None and pre.data.gain_db == 0.0
    assert pre.model.path == str(work / "runs" / CTC_STAGE / "final")
    with pytest.raises(ValueError, match="needs the CTC data"):
        _recipes(work, BuildConfig(), data / "sft.jsonl", data / "dpo.jsonl")


def test_a_linear_adapter_build_has_no_ctc_stage(tmp_path):
    paths = _recipes(tmp_path, BuildConfig(speech_adapter="linear"), tmp_path / "s", tmp_path / "d")
    assert CTC_STAGE not in paths
    assert load_recipe(paths["pre_alignment"]).model.path == str(tmp_path / "init")


def test_a_work_dir_made_with_another_adapter_is_refused(tmp_path):
    import json

    from funaudiochat.default_model.build import _init_stage

    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps({"audio_config": {}}))  # before session 5: linear
    assert _init_stage(tmp_path, 0, "linear") == tmp_path / "init"
    with pytest.raises(ValueError, match="made with the 'linear' speech adapter, this build uses 'vocab_ctc'"):
        _init_stage(tmp_path, 0, "vocab_ctc")
    with pytest.raises(ValueError, match="speech_adapter must be one of"):
        BuildConfig(speech_adapter="mlp")


def test_a_work_dir_made_with_another_text_layout_is_refused(tmp_path):
    import json

    from funaudiochat.default_model.build import _init_stage

    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps({"audio_config": {"continuous_adapter": "vocab_ctc"}}))
    assert _init_stage(tmp_path, 0, "vocab_ctc", "ahead") == tmp_path / "init"  # before session 14: ahead
    with pytest.raises(ValueError, match="made with the 'ahead' text layout, this build uses 'paced'"):
        _init_stage(tmp_path, 0, "vocab_ctc", "paced")
    with pytest.raises(ValueError, match="text_layout must be one of"):
        BuildConfig(text_layout="late")


def test_a_work_dir_made_with_another_spelling_table_is_refused(tmp_path):
    import json

    from funaudiochat.default_model.build import _init_stage

    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps({"audio_config": {"continuous_adapter": "vocab_ctc"}}))
    assert _init_stage(tmp_path, 0, "vocab_ctc") == tmp_path / "init"  # before session 20: no spelling table
    with pytest.raises(ValueError, match="made with the 0 CTC spelling buckets, this build uses 8192"):
        _init_stage(tmp_path, 0, "vocab_ctc", ctc_spelling_buckets=8192)


def test_later_stages_keep_the_ctc_trained_path_frozen_except_the_blank_embedding(tmp_path):
    data = tmp_path / "d"
    paths = _recipes(tmp_path, BuildConfig(), data / "sft.jsonl", data / "dpo.jsonl",
                          ctc=[data / "ctc.jsonl", data / "ctc_vocab.jsonl"])
    assert load_recipe(paths[CTC_STAGE]).data.train == [str(data / "ctc.jsonl"), str(data / "ctc_vocab.jsonl")]
    pre = load_recipe(paths["pre_alignment"])
    assert pre.train.freeze == ["language_model.", *FROZEN_AFTER_CTC] and not pre.optim.lr_scale
    for name in STAGES[1:]:
        assert load_recipe(paths[name]).train.freeze == FROZEN_AFTER_CTC
    assert not any("speech_vocab_adapter.blank_embed".startswith(p) for p in FROZEN_AFTER_CTC)
    assert any("speech_vocab_adapter.blank_query".startswith(p) for p in FROZEN_AFTER_CTC)
    # a spelling table only scores, like blank_query: frozen with it (and named only when it exists)
    spelled = _recipes(tmp_path / "sp", BuildConfig(ctc_spelling_buckets=64), data / "s", data / "p", ctc=data / "c")
    assert load_recipe(spelled["core_cocktail_stage1"]).train.freeze == [*FROZEN_AFTER_CTC, SPELLING_PREFIX]
    assert load_recipe(spelled[CTC_STAGE]).train.trainable == CTC_TRAINABLE  # which covers the table
    assert SPELLING_PREFIX.startswith(tuple(CTC_TRAINABLE))
    # opting out restores session 6's recipes: the encoder keeps training at a tenth of the lr
    off = _recipes(tmp_path / "off", BuildConfig(freeze_speech_in=False), data / "s", data / "p",
                        ctc=data / "ctc.jsonl")
    stage1 = load_recipe(off["core_cocktail_stage1"])
    assert stage1.train.freeze == [] and stage1.optim.lr_scale[ENCODER_PREFIX] == 0.1
    # a linear-adapter build has no CTC stage, so nothing is frozen for it
    lin = _recipes(tmp_path / "lin", BuildConfig(speech_adapter="linear"), data / "s", data / "p")
    assert load_recipe(lin["core_cocktail_stage1"]).train.freeze == []


def test_train_new_tokens_makes_the_stages_after_ctc_train_the_added_token_rows(tmp_path):
    data = tmp_path / "d"
    on = BuildConfig(train_new_tokens=True)
    paths = _recipes(tmp_path / "on", on, data / "s", data / "p", ctc=data / "c")
    assert load_recipe(paths[CTC_STAGE]).train.new_token_rows is None  # the CTC stage never runs the backbone
    assert [load_recipe(paths[n]).train.new_token_rows for n in STAGES] == [VOCAB] * len(STAGES)
    # the default is the shipped model's recipe: the rows keep their initial values
    off = _recipes(tmp_path / "off", BuildConfig(), data / "s", data / "p", ctc=data / "c")
    assert [load_recipe(off[n]).train.new_token_rows for n in STAGES] == [None] * len(STAGES)
    with pytest.raises(ValueError, match="train_new_tokens needs the backbone's original vocabulary size"):
        write_recipes(tmp_path / "x", on, data / "s", data / "p", ctc=data / "c")


def test_read_aloud_turns_join_the_sft_stages_but_not_dpo_or_ctc(tmp_path):
    data = tmp_path / "d"
    assert BuildConfig().read_aloud == 0 and BuildConfig.gpu().read_aloud == 0 and BuildConfig.smoke().read_aloud == 2
    with pytest.raises(ValueError, match="read_aloud must be >= 0, got -1"):
        BuildConfig(read_aloud=-1)
    paths = _recipes(tmp_path / "on", BuildConfig(read_aloud=5), data / "s", data / "p", ctc=data / "c",
                     read_aloud=data / "r")
    trains = {n: [Path(f) for f in load_recipe(paths[n]).data.train] for n in (CTC_STAGE, *STAGES)}
    assert trains == {CTC_STAGE: [data / "c"], "pre_alignment": [data / "s", data / "r"],
                      "core_cocktail_stage1": [data / "s", data / "r"], "core_cocktail_stage2": [data / "s", data / "r"],
                      "dpo": [data / "p"]}


def test_frozen_encoder_layers_stay_out_of_every_stage(tmp_path):
    from funaudiochat.default_model.parts import frozen_whisper_prefixes

    data = tmp_path / "d"
    all_frozen = frozen_whisper_prefixes("base", 0)
    assert all_frozen[-1] == "continuous_audio_tower.ln_post." and len(all_frozen) == 2 + 6 + 1
    cfg = BuildConfig(encoder="base", encoder_trainable_layers=0)
    paths = _recipes(tmp_path / "on", cfg, data / "s", data / "p", ctc=data / "c")
    ctc = load_recipe(paths[CTC_STAGE])
    assert ctc.train.trainable == CTC_TRAINABLE and ctc.train.freeze == list(all_frozen)
    assert ctc.optim.lr_scale[ADAPTER_PREFIX] == 1.0  # the adapter behind the frozen layers trains at full lr
    assert ENCODER_PREFIX not in ctc.optim.lr_scale  # it would scale nothing, which the trainer refuses
    for name in STAGES:  # the later stages freeze the whole CTC-trained path, the layers with it
        assert ENCODER_PREFIX in load_recipe(paths[name]).train.freeze
    top2 = _recipes(tmp_path / "top2", BuildConfig(encoder="base", encoder_trainable_layers=2), data / "s",
                    data / "p", ctc=data / "c")
    ctc = load_recipe(top2[CTC_STAGE])
    assert ctc.train.freeze == [f"continuous_audio_tower.{m}." for m in ("conv1", "conv2", *(f"layers.{i}" for i in range(4)))]
    assert ctc.optim.lr_scale[ENCODER_PREFIX] == 0.1  # the two top layers train at a tenth of the lr
    lin = _recipes(tmp_path / "lin", BuildConfig(speech_adapter="linear", encoder_trainable_layers=0),
                   data / "s", data / "p")
    assert load_recipe(lin["core_cocktail_stage1"]).train.freeze == list(frozen_whisper_prefixes("tiny.en", 0))
    off = _recipes(tmp_path / "off", BuildConfig(encoder="base"), data / "s", data / "p", ctc=data / "c")
    assert load_recipe(off[CTC_STAGE]).train.freeze == []  # base alone is fine-tuned like tiny.en
    with pytest.raises(ValueError, match="encoder must be one of \\['base', 'tiny.en'\\], got 'small'"):
        BuildConfig(encoder="small")
    with pytest.raises(ValueError, match="Whisper tiny.en has 4 layers; trainable layers must be 0 to 4, got 6"):
        BuildConfig(encoder_trainable_layers=6)


def test_a_work_dir_made_with_another_encoder_is_refused(tmp_path):
    import json

    from funaudiochat.default_model.build import _init_stage

    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps({"audio_config": {"continuous_adapter": "vocab_ctc"}}))
    (tmp_path / "init" / "original_vocab.json").write_text(json.dumps({"original_vocab": VOCAB}))
    assert _init_stage(tmp_path, 0, "vocab_ctc", "ahead", "tiny.en") == tmp_path / "init"  # before session 18
    with pytest.raises(ValueError, match="made with the 'tiny.en' speech encoder, this build uses 'base'"):
        _init_stage(tmp_path, 0, "vocab_ctc", "ahead", "base")


def test_every_stage_of_a_frozen_encoder_build_gets_an_optimizer(tmp_path):
    """The trainer refuses an lr scale that no trainable parameter falls under; none is left over."""
    import torch

    from funaudiochat.config import tiny_config
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.training.model_setup import configure_trainable
    from funaudiochat.training.trainer import build_optimizer

    cfg = tiny_config()
    cfg.audio_config.continuous_adapter = "vocab_ctc"
    cfg.audio_config.encoder_layers = 6  # as many as Whisper base, so every frozen prefix names a layer
    model = FunAudioChatForConditionalGeneration(cfg)
    data = tmp_path / "d"
    for build in (BuildConfig(encoder="base", encoder_trainable_layers=0),
                  BuildConfig(encoder="base", encoder_trainable_layers=1),
                  BuildConfig(speech_adapter="linear", encoder_trainable_layers=0)):
        paths = _recipes(tmp_path / f"{build.speech_adapter}{build.encoder_trainable_layers}", build, data / "s",
                         data / "p", ctc=data / "c")
        for name in (CTC_STAGE, "pre_alignment", "core_cocktail_stage1"):
            if name not in paths:
                continue
            r = load_recipe(paths[name])
            trained = configure_trainable(model, r.train.freeze, r.train.trainable)
            assert trained and not any(n.startswith("continuous_audio_tower.layers.0.") for n in trained)
            assert isinstance(build_optimizer(model, r), torch.optim.AdamW)


def test_the_cpu_base_preset_is_session_21s_recipe_and_its_recipes_validate(tmp_path):
    new, plain = BuildConfig.cpu_base(), BuildConfig()
    assert (new.encoder, new.encoder_trainable_layers, new.train_new_tokens, new.ctc_spelling_buckets) == \
        ("base", 2, True, 8192)
    assert (plain.encoder, plain.encoder_trainable_layers, plain.train_new_tokens, plain.ctc_spelling_buckets) == \
        ("tiny.en", None, False, 0)
    # session 27 cut the joint stages' steps of the shipped recipe only; session 6's keeps its counts
    assert [s.max_steps for s in new.stages.values()] == [120, 130, 50, 30]
    assert [s.max_steps for s in plain.stages.values()] == [160, 180, 90, 50]
    assert new.ctc.max_steps == plain.ctc.max_steps == 520
    data = tmp_path / "d"
    paths = _recipes(tmp_path / "new", new, data / "s", data / "p", ctc=data / "c")
    ctc = load_recipe(paths[CTC_STAGE])
    assert ctc.train.freeze[-1] == "continuous_audio_tower.layers.3."  # base's layers 4 and 5 train
    for name in STAGES:
        r = load_recipe(paths[name])
        assert r.train.new_token_rows == VOCAB and SPELLING_PREFIX in r.train.freeze
        assert r.train.speech_loss is False  # session 25: the SRH stage trains a fresh head instead
    assert (new.srh.steps, new.srh.prev_scale, new.joint_speech_loss) == (400, 30.0, False)
    assert load_recipe(paths[CTC_STAGE]).train.speech_loss is True  # the key is for sft and dpo stages only
    plain_paths = _recipes(tmp_path / "plain", plain, data / "s", data / "p", ctc=data / "c")
    assert all(load_recipe(plain_paths[n]).train.speech_loss is True for n in STAGES)
    # no preset batches by length (session 29); the smoke build does, to run that path end to end
    assert [load_recipe(p).data.group_by_length for p in (*paths.values(), *plain_paths.values())] == [0] * 10
    smoke = BuildConfig.smoke()
    assert [s.group_by_length for s in (smoke.ctc, *smoke.stages.values(), smoke.srh)] == [2] * 6


class _Stop(Exception):
    pass


def _cli_config(monkeypatch, tmp_path, *flags):
    """The BuildConfig that ``build-default`` hands to run_build for these flags (nothing is built)."""
    from funaudiochat.default_model import build

    seen = {}

    def fake_run_build(out, work, smoke=False, benchdata=None, config=None, **kw):
        seen["config"] = config
        raise _Stop

    monkeypatch.setattr(build, "run_build", fake_run_build)
    with pytest.raises(_Stop):
        main(["build-default", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), *flags])
    return seen["config"]


def test_build_cli_starts_from_the_preset_and_flags_override_it(monkeypatch, tmp_path):
    shipped = _cli_config(monkeypatch, tmp_path)
    assert DEFAULT_PRESET == "cpu-base" and shipped == BuildConfig.cpu_base()
    assert _cli_config(monkeypatch, tmp_path, "--preset", "cpu-base") == shipped
    old = _cli_config(monkeypatch, tmp_path, "--preset", "cpu")
    assert old == BuildConfig() and old.encoder == "tiny.en"  # session 6's recipe
    # the default recipe, spelled out flag by flag over session 6's as it was run
    assert _cli_config(monkeypatch, tmp_path, "--preset", "cpu", "--encoder", "base", "--encoder-trainable-layers",
                       "2", "--train-new-tokens", "--ctc-spelling-buckets", "8192", "--srh-refine", "400",
                       "--srh-prev-scale", "30", "--no-joint-speech-loss", "--steps", "pre_alignment=120", "--steps",
                       "core_cocktail_stage1=130", "--steps", "core_cocktail_stage2=50", "--steps", "dpo=30",
                       "--group-by-length", "0") == shipped
    # and back to session 6's recipe from the default
    assert _cli_config(monkeypatch, tmp_path, "--encoder", "tiny.en", "--no-train-new-tokens",
                       "--ctc-spelling-buckets", "0", "--srh-refine", "0", "--steps", "pre_alignment=160", "--steps",
                       "core_cocktail_stage1=180", "--steps", "core_cocktail_stage2=90", "--steps", "dpo=50") == old
    # batches grouped by length in every stage, the SRH stage's included (copies: the preset is untouched)
    on = _cli_config(monkeypatch, tmp_path, "--group-by-length", "16", "--steps", "dpo=7")
    assert [s.group_by_length for s in (on.ctc, *on.stages.values(), on.srh)] == [16] * 6
    assert on.stages["dpo"].max_steps == 7 and BuildConfig.cpu_base().stages["dpo"].group_by_length == 0
    assert BuildConfig.cpu_base().srh.group_by_length == 0
    with pytest.raises(SystemExit, match="--group-by-length must be >= 0"):
        _cli_config(monkeypatch, tmp_path, "--group-by-length", "-1")
    # another encoder trains all its layers unless told; the linear adapter has no spelling table
    assert _cli_config(monkeypatch, tmp_path, "--preset", "cpu", "--encoder", "base").encoder_trainable_layers is None
    assert _cli_config(monkeypatch, tmp_path, "--encoder-trainable-layers", "1").encoder_trainable_layers == 1
    # the SRH stage: off with 0 (the joint stages then train the head), rescaled, or added to another preset
    no_srh = _cli_config(monkeypatch, tmp_path, "--srh-refine", "0")
    assert no_srh.srh is None and no_srh.joint_speech_loss
    scaled = _cli_config(monkeypatch, tmp_path, "--srh-prev-scale", "10")
    assert (scaled.srh.steps, scaled.srh.prev_scale, scaled.joint_speech_loss) == (400, 10.0, False)
    both = _cli_config(monkeypatch, tmp_path, "--joint-speech-loss", "--srh-refine", "50")
    assert (both.srh.steps, both.srh.prev_scale, both.joint_speech_loss) == (50, None, True)
    added = _cli_config(monkeypatch, tmp_path, "--preset", "cpu", "--srh-refine", "20", "--srh-prev-scale", "4")
    assert (added.srh.steps, added.srh.prev_scale, added.joint_speech_loss) == (20, 4.0, True)
    # --steps changes copies: the preset's specs (shared by every BuildConfig.cpu_base()) stay as they are
    steps = _cli_config(monkeypatch, tmp_path, "--steps", "ctc_alignment=60", "--steps", "dpo=7", "--steps", "dpo=8")
    assert (steps.ctc.max_steps, steps.stages["dpo"].max_steps, steps.stages["pre_alignment"].max_steps) == (60, 8, 120)
    assert steps.stages["dpo"].lr_max == shipped.stages["dpo"].lr_max and shipped.stages["dpo"].max_steps == 30
    assert (BuildConfig.cpu_base().ctc.max_steps, BuildConfig.cpu_base().stages["dpo"].max_steps) == (520, 30)
    lin = _cli_config(monkeypatch, tmp_path, "--speech-adapter", "linear")
    assert (lin.speech_adapter, lin.ctc_spelling_buckets, lin.encoder) == ("linear", 0, "base")
    smoke = _cli_config(monkeypatch, tmp_path, "--smoke")
    assert smoke == BuildConfig.smoke() and smoke.ctc_spelling_buckets == 256
    gpu = _cli_config(monkeypatch, tmp_path, "--preset", "gpu", "--scale", "0.5", "--train-new-tokens")
    assert gpu.train_new_tokens and gpu.stages["dpo"].max_steps == BuildConfig.gpu(0.5).stages["dpo"].max_steps
