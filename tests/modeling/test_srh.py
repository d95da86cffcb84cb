"""Speech Refined Head: the previous-token scale (``config.srh_prev_scale``)."""

import pytest
import torch

from funaudiochat.config import FunAudioChatAudioEncoderConfig, tiny_config
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.testing import synthetic_batch


def _model(scale: float = 1.0) -> FunAudioChatForConditionalGeneration:
    torch.manual_seed(0)
    model = FunAudioChatForConditionalGeneration(tiny_config()).eval()
    model.config.audio_config.srh_prev_scale = scale
    return model


def test_previous_token_embeddings_are_the_table_rows_times_the_scale():
    model = _model(30.0)
    head = model.audio_invert_tower
    table = model.audio_tower.embed_tokens.weight
    pad = model.config.audio_config.pad_token_id
    ids = torch.tensor([[3, -100, 7]])
    got = head.embed_previous(ids)
    assert torch.equal(got[0, 0], 30.0 * table[3]) and torch.equal(got[0, 2], 30.0 * table[7])
    assert torch.equal(got[0, 1], 30.0 * table[pad])  # "no previous token" is the pad row, scaled alike


def test_the_released_scale_leaves_the_embedding_untouched():
    head = _model().audio_invert_tower
    ids = torch.tensor([[1, 2, 5]])
    assert torch.equal(head.embed_previous(ids), head.lm_head.weight[ids])


def test_the_scale_changes_the_speech_loss_and_survives_a_save(tmp_path):
    batch = synthetic_batch(tiny_config(), batch_size=2, seed=3)
    with torch.no_grad():
        plain = _model().forward(**batch).speech_loss
        scaled_model = _model(30.0)
        scaled = scaled_model.forward(**batch).speech_loss
    assert not torch.isclose(plain, scaled)  # the head reads its previous token through the scale
    scaled_model.save_pretrained(tmp_path)
    again = FunAudioChatForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert again.config.audio_config.srh_prev_scale == 30.0
    assert again.audio_invert_tower.config is again.config.audio_config  # the head reads the live config
    with torch.no_grad():
        assert torch.equal(again.forward(**batch).speech_loss, scaled)


@pytest.mark.parametrize("bad", [0, -2.0, float("nan"), float("inf"), True, "30"])
def test_a_scale_that_is_not_a_positive_number_is_refused(bad):
    with pytest.raises(ValueError, match="srh_prev_scale must be a finite number > 0"):
        FunAudioChatAudioEncoderConfig(srh_prev_scale=bad)
