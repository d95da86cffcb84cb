from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from funaudiochat.speech.audio import (
    add_noise_at_snr,
    load_audio,
    resample,
    speed_perturb,
    to_mono_float32,
    write_wav_atomic,
)


def _tone(sr: int = 16000, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_add_noise_hits_the_requested_snr_exactly_and_is_seeded() -> None:
    clean = _tone()
    noisy = add_noise_at_snr(clean, snr_db=10.0, seed=3)
    noise = noisy.astype(np.float64) - clean
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))
    assert snr == pytest.approx(10.0, abs=1e-3)
    assert noisy.dtype == np.float32
    assert np.array_equal(noisy, add_noise_at_snr(clean, 10.0, seed=3))
    assert not np.array_equal(noisy, add_noise_at_snr(clean, 10.0, seed=4))


def test_add_noise_rejects_silence() -> None:
    with pytest.raises(ValueError, match="silent"):
        add_noise_at_snr(np.zeros(100, np.float32), 10.0, seed=0)


@pytest.mark.parametrize("factor", [0.85, 1.1])
def test_speed_perturb_scales_duration_and_pitch_together(factor) -> None:
    tone = _tone(seconds=2.0)
    fast = speed_perturb(tone, factor)
    assert abs(len(fast) - len(tone) / factor) <= 1
    spectrum = np.abs(np.fft.rfft(fast))
    peak_hz = np.argmax(spectrum) * 16000 / len(fast)
    assert peak_hz == pytest.approx(440 * factor, abs=2.0)


def test_speed_perturb_rejects_a_non_positive_factor() -> None:
    with pytest.raises(ValueError, match="speed factor must be > 0, got 0"):
        speed_perturb(_tone(), 0.0)


def test_to_mono_float32_handles_int16_and_stereo() -> None:
    stereo = np.array([[16384, -16384], [32767, 32767]], dtype=np.int16)
    out = to_mono_float32(stereo)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 32767 / 32768], atol=1e-7)
    with pytest.raises(ValueError, match="shape"):
        to_mono_float32(np.zeros((2, 2, 2)))


def test_write_wav_atomic_roundtrip_leaves_no_temp_files(tmp_path) -> None:
    audio = _tone(22050, 0.5)
    path = write_wav_atomic(tmp_path / "sub" / "a.wav", audio, 22050)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.wav"]
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
    back = load_audio(path, sr=16000)
    assert back.shape[0] == 8000
    np.testing.assert_allclose(back, resample(audio, 22050, 16000), atol=2e-4)


def test_load_audio_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")
