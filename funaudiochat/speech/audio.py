"""Small waveform helpers shared by TTS, ASR and data synthesis: resampling, file I/O, noise.

Kept separate so each backend returns plain float32 arrays and the file format
decisions (16-bit PCM WAV, atomic writes) live in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["TARGET_SR", "to_mono_float32", "resample", "load_audio", "write_wav_atomic", "add_noise_at_snr", "speed_perturb"]

TARGET_SR = 16000
"""Sample rate of everything this package hands out (Whisper and the speech encoder expect 16 kHz)."""


def to_mono_float32(audio: np.ndarray) -> np.ndarray:
    """Average channels (last axis if 2-D) and convert to contiguous float32."""
    audio = np.asarray(audio)
    if audio.ndim not in (1, 2):
        raise ValueError(f"expected 1-D or 2-D (frames, channels) audio, got shape {audio.shape}")
    if np.issubdtype(audio.dtype, np.integer):  # scale before averaging, which would turn ints into floats
        audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return np.ascontiguousarray(audio, dtype=np.float32)


def resample(audio: np.ndarray, sr_in: int, sr_out: int = TARGET_SR) -> np.ndarray:
    """Resample any-channel audio to mono float32 (soxr HQ, via ``funaudiochat.audio.io``)."""
    from funaudiochat.audio.io import resample as _resample

    return _resample(to_mono_float32(audio), sr_in, sr_out)


def load_audio(path: str | os.PathLike[str], sr: int = TARGET_SR) -> np.ndarray:
    """Read an audio file as mono float32 at `sr` Hz."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    data, file_sr = sf.read(str(path), dtype="float32", always_2d=False)
    return resample(data, int(file_sr), sr)


def write_wav_atomic(path: str | os.PathLike[str], audio: np.ndarray, sr: int) -> Path:
    """Write mono 16-bit PCM WAV atomically (``funaudiochat.audio.io.save_wav``), clipping to [-1, 1].

    A run killed mid-write therefore never leaves a truncated file under the final name.
    """
    from funaudiochat.audio.io import save_wav

    return save_wav(path, np.clip(to_mono_float32(audio), -1.0, 1.0), sr, subtype="PCM_16")


def add_noise_at_snr(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """Add white Gaussian noise scaled so the signal-to-noise ratio is exactly `snr_db`.

    The noise is drawn from a generator seeded by `seed`, so the result is reproducible.
    """
    audio = to_mono_float32(audio)
    signal_power = float(np.mean(audio.astype(np.float64) ** 2))
    if signal_power == 0.0:
        raise ValueError("cannot add noise at a given SNR to a silent signal")
    noise = np.random.default_rng(seed).standard_normal(audio.shape[0])
    noise *= np.sqrt(signal_power / 10.0 ** (snr_db / 10.0) / np.mean(noise**2))
    return (audio.astype(np.float64) + noise).astype(np.float32)


def speed_perturb(audio: np.ndarray, factor: float, sr: int = TARGET_SR) -> np.ndarray:
    """Play `audio` `factor` times as fast, tempo and pitch together (like tape speed).

    The classic ASR augmentation: a few synthetic voices at 0.9x to 1.1x sound like more speakers.
    Done by resampling from ``sr * factor`` to ``sr``, so the output has ``len / factor`` samples.
    """
    if not factor > 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    return resample(audio, int(round(sr * factor)), sr)
