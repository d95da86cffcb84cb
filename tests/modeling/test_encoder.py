"""The Whisper-style encoder: windowed attention, variable lengths, output arithmetic."""

import math

import numpy as np
import pytest
import torch

from funaudiochat.config import FunAudioChatAudioEncoderConfig
from funaudiochat.modeling.encoder import SpeechEncoder, encoder_output_lengths, sinusoids


def encoder(n_window: int = 50) -> SpeechEncoder:
    torch.manual_seed(0)
    cfg = FunAudioChatAudioEncoderConfig(
        num_mel_bins=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16,
        output_dim=8, n_window=n_window,
    )
    return SpeechEncoder(cfg).eval()


def test_sinusoids_match_whisper_formula():
    table = sinusoids(7, 6).numpy()
    inc = math.log(10000) / 2
    inv = np.exp(-inc * np.arange(3))
    t = np.arange(7)[:, None] * inv[None]
    np.testing.assert_allclose(table, np.concatenate([np.sin(t), np.cos(t)], 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("frames, expected", [(100, 25), (101, 25), (1, 0), (3000, 750), (13, 3)])
def test_output_length_arithmetic(frames, expected):
    assert int(encoder_output_lengths(torch.tensor(frames))) == expected
    enc = encoder()
    out, lens = enc(torch.randn(1, 16, frames))
    assert int(lens[0]) == expected and out.shape[1] == expected


def test_batched_equals_one_at_a_time_and_padding_is_zero():
    enc = encoder()
    x = torch.randn(3, 16, 230)
    lens = torch.tensor([230, 120, 37])
    with torch.no_grad():
        out, out_lens = enc(x, lens)
        for i in range(3):
            alone, _ = enc(x[i : i + 1, :, : lens[i]])
            n = int(out_lens[i])
            torch.testing.assert_close(out[i, :n], alone[0], atol=1e-5, rtol=1e-5)
            assert out[i, n:].abs().max() == 0 if n < out.shape[1] else True


def test_attention_is_limited_to_windows():
    """With 1 s windows, the second window's output does not depend on the first window's input."""
    enc = encoder(n_window=50)  # windows of 100 mel frames
    x = torch.randn(1, 16, 200)
    y = x.clone()
    y[:, :, :100] = torch.randn(1, 16, 100)
    with torch.no_grad():
        hx, _ = enc.hidden_states(x)
        hy, _ = enc.hidden_states(y)
        # every 50 Hz frame of window 2 is unchanged; window 1 changed
        torch.testing.assert_close(hx[0, 50:], hy[0, 50:])
        assert (hx[0, :50] - hy[0, :50]).abs().max() > 1e-3
        # and window 2 equals encoding it alone (positions restart at 0)
        alone, _ = enc.hidden_states(x[:, :, 100:])
        torch.testing.assert_close(hx[0, 50:], alone[0], atol=1e-5, rtol=1e-5)


def test_wide_window_means_full_context():
    enc = encoder(n_window=1000)
    x = torch.randn(1, 16, 200)
    y = x.clone()
    y[:, :, :100] = 0
    with torch.no_grad():
        assert (enc.hidden_states(x)[0][0, 60:] - enc.hidden_states(y)[0][0, 60:]).abs().max() > 1e-3


def test_wrong_feature_shape_is_reported():
    with pytest.raises(ValueError, match=r"\[batch, 16 mel bins, frames\]"):
        encoder()(torch.randn(1, 80, 100))
