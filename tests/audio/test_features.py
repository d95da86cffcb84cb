"""Log-mel features: equal to transformers' WhisperFeatureExtractor, frame arithmetic, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funaudiochat.audio import frames
from funaudiochat.audio.features import batch_features, log_mel, mel_filters

from .conftest import chirp

WhisperFeatureExtractor = pytest.importorskip("transformers").WhisperFeatureExtractor


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_transformers(n_mels):
    ref = WhisperFeatureExtractor(feature_size=n_mels).mel_filters.T  # [n_mels, 201], float64
    ours = mel_filters(n_mels).numpy()
    assert ours.shape == (n_mels, 201)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-8)


def test_mel_filters_match_librosa():
    librosa = pytest.importorskip("librosa")
    for n_mels in (80, 128):
        ref = librosa.filters.mel(sr=16_000, n_fft=400, n_mels=n_mels)  # Slaney scale and norm
        np.testing.assert_allclose(mel_filters(n_mels).numpy(), ref, rtol=0, atol=1e-7)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("n_samples", [48_037, 16_000 * 7, 5000, 1601, 400])
def test_log_mel_equals_whisper_extractor_unpadded(n_mels, n_samples):
    """With padding='longest' a single utterance is analysed at its own length by transformers too,
    so every frame, including the max-8 floor, must agree."""
    x = chirp(n_samples / 16_000)[:n_samples]
    ref = WhisperFeatureExtractor(feature_size=n_mels)(
        x, sampling_rate=16_000, padding="longest", return_tensors="np"
    ).input_features[0]
    ours = log_mel(x, n_mels).numpy()
    assert ours.shape == (n_mels, n_samples // 160) == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_whisper_extractor_30s_padded(n_mels):
    """Against the default (zero-padded to 30 s) extractor, frames whose 400-sample window lies
    entirely inside the waveform agree; the last one or two frames differ because we reflect the
    signal at its own end where transformers sees zeros. The utterance maximum lies inside the signal,
    so the max-8 floor (taken over the padded 30 s by transformers) is the same."""
    n = 16_000 * 3 + 37
    x = chirp(3.01)[:n]
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    out = fe(x, sampling_rate=16_000, return_tensors="np", return_attention_mask=True)
    ref = out.input_features[0]
    ours = log_mel(x, n_mels).numpy()
    assert ref.shape == (n_mels, 3000)
    inside = (n - 200) // 160 + 1  # frames k with 160k + 200 <= n
    assert (inside, ours.shape[1]) == (299, 300)
    np.testing.assert_allclose(ours[:, :inside], ref[:, :inside], rtol=0, atol=1e-4)
    # transformers' mask counts ceil(n / 160) frames; we produce n // 160.
    assert int(out.attention_mask[0].sum()) == frames.hf_padded_mel_frames(n) == 301
    assert ours.shape[1] == frames.mel_frames(n) == 300


def test_batch_items_equal_single_items():
    waves = [chirp(2.0, seed=1), chirp(0.7, seed=2)[:11_111], chirp(1.3, seed=3)]
    feats, mask = batch_features(waves, 128)
    lengths = [w.size // 160 for w in waves]
    assert feats.shape == (3, 128, max(lengths)) and feats.dtype == torch.float32
    assert mask.dtype == torch.long and mask.sum(1).tolist() == lengths
    for i, w in enumerate(waves):
        single = log_mel(w, 128)
        torch.testing.assert_close(feats[i, :, : lengths[i]], single, rtol=0, atol=1e-5)
        assert torch.all(feats[i, :, lengths[i]:] == 0.0)
        assert torch.all(mask[i, : lengths[i]] == 1) and torch.all(mask[i, lengths[i]:] == 0)


def test_dynamic_range_floor_is_per_utterance():
    loud = chirp(1.0)
    quiet_then_loud = np.concatenate([np.full(8000, 1e-3, dtype=np.float32), loud])
    f = log_mel(quiet_then_loud, 80)
    assert float(f.max() - f.min()) == pytest.approx(2.0, abs=1e-5)  # 8 log10 units / 4
    assert f.shape == (80, 150)


def test_accepts_torch_and_numpy_alike():
    x = chirp(0.5)
    torch.testing.assert_close(log_mel(torch.from_numpy(x), 80), log_mel(x, 80), rtol=0, atol=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"audio: 399 samples is shorter than one analysis window"):
        log_mel(np.ones(399, dtype=np.float32))
    with pytest.raises(ValueError, match=r"audio\[1\]: expected a 1-D mono waveform, got shape \(2, 800\)"):
        batch_features([np.ones(800, dtype=np.float32), np.ones((2, 800), dtype=np.float32)])
    with pytest.raises(ValueError, match="expected float samples"):
        log_mel(np.ones(800, dtype=np.int16))
    with pytest.raises(ValueError, match="at least one waveform"):
        batch_features([])
    with pytest.raises(ValueError, match="n_mels must be positive"):
        mel_filters(0)


def test_frame_arithmetic():
    # 7 s: 112000 samples -> 700 mel frames -> 350 at 50 Hz -> 175 at 25 Hz; 175 speech tokens -> 35.
    n = 7 * 16_000
    assert frames.mel_frames(n) == 700
    assert frames.conv_frames(700) == 350
    assert frames.pooled_frames(350) == 175
    assert frames.speech_token_count(n) == 175
    assert frames.llm_positions(n) == 35
    # 3.01 s: 301 mel frames -> 151 -> 75; the processor allots int(3.01 * 25) = 75 tokens -> 15.
    assert [frames.mel_frames(48_160), frames.conv_frames(301), frames.pooled_frames(151)] == [301, 151, 75]
    assert frames.llm_positions(48_160) == 15
    assert frames.llm_positions(16_000 * 360) == 360 * 5
    assert frames.mel_frames(159) == 0 and frames.conv_frames(0) == 0 and frames.pooled_frames(1) == 0
    # conv/pool formulas equal torch's own output sizes
    conv = torch.nn.Conv1d(1, 1, 3, stride=2, padding=1)
    for t in (1, 2, 3, 200, 301, 3000):
        t50 = conv(torch.zeros(1, 1, t)).shape[-1]
        assert frames.conv_frames(t) == t50
        if t50 >= 2:
            assert frames.pooled_frames(t50) == torch.nn.functional.avg_pool1d(
                torch.zeros(1, 1, t50), 2, 2).shape[-1]
