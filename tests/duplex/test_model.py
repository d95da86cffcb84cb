"""The duplex model on tiny random weights: head, save/load, U[t] causality, step inputs."""

import json

import numpy as np
import pytest
import torch

from funaudiochat.config import tiny_config
from funaudiochat.duplex.model import (
    ACTIONS,
    STEP_SAMPLES,
    action_logits,
    enable_duplex,
    step_inputs,
    user_step_features,
    user_step_features_batch,
)
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.testing import synthetic_batch


def make(seed: int = 0) -> FunAudioChatForConditionalGeneration:
    torch.manual_seed(seed)
    return FunAudioChatForConditionalGeneration(tiny_config()).eval()


def noise(n_steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(STEP_SAMPLES * n_steps)).astype(np.float32)


def test_enable_duplex_adds_head_and_config():
    model = make()
    assert model.duplex_head is None and model.config.duplex is None
    assert enable_duplex(model) is model
    assert model.duplex_head.weight.shape == (len(ACTIONS), model.config.text_config.hidden_size)
    assert model.config.duplex == {"actions": list(ACTIONS), "step_seconds": 0.2, "window_seconds": 2.0}
    # an untrained head listens
    hidden = torch.randn(7, model.config.text_config.hidden_size)
    assert (action_logits(model, hidden).argmax(-1) == ACTIONS.index("listen")).all()
    head = model.duplex_head
    assert enable_duplex(model).duplex_head is head  # idempotent


def test_enable_duplex_needs_five_tokens_per_step():
    torch.manual_seed(0)
    model = FunAudioChatForConditionalGeneration(tiny_config(group_size=2))
    with pytest.raises(ValueError, match="group_size 5"):
        enable_duplex(model)


def test_duplex_save_load_round_trip(tmp_path):
    model = enable_duplex(make())
    with torch.no_grad():
        model.duplex_head.weight.normal_()  # so that a re-initialised head would show
    audio = noise(6)
    cfg = model.config
    prev_text = torch.full((1, 6), cfg.sil_id)
    prev_speech = torch.full((1, 6, 5), cfg.audio_config.pad_token_id)
    with torch.no_grad():
        emb = step_inputs(model, user_step_features(model, audio)[None], prev_text, prev_speech)
        before = action_logits(model, model.backbone()(inputs_embeds=emb).last_hidden_state)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["duplex"]["actions"] == list(ACTIONS)
    loaded = FunAudioChatForConditionalGeneration.from_pretrained(tmp_path).eval()  # strict
    assert loaded.config.duplex == cfg.duplex
    assert torch.equal(loaded.duplex_head.weight, model.duplex_head.weight)
    with torch.no_grad():
        emb2 = step_inputs(loaded, user_step_features(loaded, audio)[None], prev_text, prev_speech)
        after = action_logits(loaded, loaded.backbone()(inputs_embeds=emb2).last_hidden_state)
    assert torch.equal(before, after)


def test_half_duplex_checkpoint_is_unchanged(tmp_path):
    model = make()
    batch = synthetic_batch(model.config)
    with torch.no_grad():
        before = model(**batch)
    model.save_pretrained(tmp_path)
    # checkpoints written before the duplex field existed have no such key
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    assert saved.pop("duplex", None) is None
    config_file.write_text(json.dumps(saved))
    loaded = FunAudioChatForConditionalGeneration.from_pretrained(tmp_path).eval()  # strict
    assert loaded.duplex_head is None and loaded.config.duplex is None
    assert not any(n.startswith("duplex_head") for n, _ in loaded.named_parameters())
    with torch.no_grad():
        after = loaded(**batch)
    assert torch.equal(before.logits, after.logits) and torch.equal(before.loss, after.loss)
    with pytest.raises(ValueError, match="enable_duplex"):
        action_logits(loaded, torch.zeros(1, loaded.config.text_config.hidden_size))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_user_step_features_shape_and_causality():
    model = make()
    audio = noise(16)
    with torch.no_grad():
        full = user_step_features(model, audio)
        assert full.shape == (16, model.config.text_config.hidden_size)
        for n in (1, 3, 9, 12):
            # appending audio after step n - 1 changes nothing before it (up to float rounding, which
            # depends on the batch shape with several BLAS threads)
            close(user_step_features(model, audio[: STEP_SAMPLES * n]), full[:n])
        # a trailing partial step is ignored; start_step / n_steps select steps of the same buffer
        close(user_step_features(model, audio[: STEP_SAMPLES * 5 + 1000]), full[:5])
        close(user_step_features(model, audio, n_steps=3, start_step=11), full[11:14])
        streamed = torch.cat([user_step_features(model, audio[: STEP_SAMPLES * (t + 1)], 1, t) for t in range(16)])
        close(streamed, full)
        # what the future holds cannot leak into the past
        other = audio.copy()
        other[STEP_SAMPLES * 10 :] = noise(6, seed=5)
        close(user_step_features(model, other)[:10], full[:10])
        assert not torch.equal(user_step_features(model, other)[10], full[10])


def test_user_step_features_windows_are_two_seconds():
    """Audio older than 2 s before the end of step t does not matter for U[t]."""
    model = make()
    audio = noise(15)
    changed = audio.copy()
    changed[: STEP_SAMPLES * 4] = 0.0  # steps 0-3; step 14's window covers steps 5-14
    with torch.no_grad():
        a, b = user_step_features(model, audio), user_step_features(model, changed)
    assert torch.equal(a[13:], b[13:])
    assert not torch.equal(a[13 - 10], b[13 - 10])


def test_user_step_features_batch_matches_single():
    model = make()
    audios = [noise(12, seed=1), noise(4, seed=2)]
    with torch.no_grad():
        batch = user_step_features_batch(model, audios, [12, 3])
        assert batch.shape == (2, 12, model.config.text_config.hidden_size)
        torch.testing.assert_close(batch[0], user_step_features(model, audios[0]))
        torch.testing.assert_close(batch[1, :3], user_step_features(model, audios[1], 3))
    assert torch.equal(batch[1, 3:], torch.zeros_like(batch[1, 3:]))


def test_user_step_features_rejects_short_audio():
    model = make()
    with pytest.raises(ValueError, match="samples"):
        user_step_features(model, noise(3), n_steps=4)
    with pytest.raises(ValueError, match="1-D"):
        user_step_features(model, np.zeros((2, STEP_SAMPLES), dtype=np.float32))


def test_step_inputs_is_the_sum_of_its_parts():
    model = enable_duplex(make())
    cfg = model.config
    u = torch.randn(2, 3, cfg.text_config.hidden_size)
    text = torch.tensor([[cfg.sil_id, 17, 18], [cfg.sil_id, cfg.sil_id, 40]])
    speech = torch.randint(0, 6561, (2, 3, 5))
    got = step_inputs(model, u, text, speech)
    grouped = model.audio_tower.group_tokens(speech.reshape(6, 5)).reshape(2, 3, -1)
    want = u + model.get_input_embeddings()(text) + grouped
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="prev_speech"):
        step_inputs(model, u, text, speech[..., :4])
