"""Whisper log-mel features in plain torch, without padding every utterance to 30 s.

Whisper's front end (16 kHz, 25 ms Hann window, 10 ms hop, Slaney mel filters up to 8 kHz, log10,
floor at max - 8, then ``(x + 4) / 4``) is reproduced exactly, but each utterance is analysed at its
own length: the speech encoder here slices its positional table, so the 30-s padding that Whisper
needs only wastes compute (a 3-s question would cost ten times more).

Frame count: a waveform of N samples yields ``N // 160`` frames (see :mod:`.frames`). The
``max - 8`` floor is taken per utterance over its own frames only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .frames import HOP_LENGTH, N_FFT, SAMPLE_RATE

MIN_SAMPLES = N_FFT
"""Shortest waveform accepted (one 25-ms analysis window); reflection padding needs > 200 samples."""

_LOG_FLOOR = 1e-10
_DYNAMIC_RANGE = 8.0  # in log10 units, i.e. 80 dB


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_break, mel_break = 1000.0, 15.0
    log_step = math.log(6.4) / 27.0
    lin = 3.0 * hz / 200.0
    log = mel_break + np.log(np.maximum(hz, 1e-12) / f_break) / log_step
    return np.where(hz >= f_break, log, lin)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_break, mel_break = 1000.0, 15.0
    log_step = math.log(6.4) / 27.0
    lin = 200.0 * mel / 3.0
    log = f_break * np.exp(log_step * (mel - mel_break))
    return np.where(mel >= mel_break, log, lin)


def _mel_filters_f64(n_mels: int, n_fft: int, sample_rate: int, f_max: float) -> np.ndarray:
    n_bins = n_fft // 2 + 1
    bin_hz = np.linspace(0.0, sample_rate / 2.0, n_bins)
    edges_hz = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(f_max), n_mels + 2))
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bin_hz[None, :]) / (upper - centre)
    tri = np.clip(np.minimum(rising, falling), 0.0, None)
    # Slaney normalisation: every filter has unit area, so wide high-frequency bands are not louder.
    tri *= (2.0 / (upper - lower))
    return tri


def mel_filters(n_mels: int, *, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                f_max: float = 8000.0) -> torch.Tensor:
    """Slaney-normalised triangular mel filter bank ``[n_mels, n_fft // 2 + 1]`` (float32)."""
    if n_mels <= 0:
        raise ValueError(f"n_mels must be positive, got {n_mels}")
    # Recomputed per call (about 0.1 ms) rather than cached, to keep the module free of state.
    return torch.from_numpy(_mel_filters_f64(n_mels, n_fft, sample_rate, float(f_max)).astype(np.float32))


def _as_tensor(audio: np.ndarray | torch.Tensor, index: int | None = None) -> torch.Tensor:
    where = "audio" if index is None else f"audio[{index}]"
    x = audio if isinstance(audio, torch.Tensor) else torch.from_numpy(np.asarray(audio))
    if x.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D mono waveform, got shape {tuple(x.shape)}")
    if x.numel() < MIN_SAMPLES:
        raise ValueError(
            f"{where}: {x.numel()} samples is shorter than one analysis window ({MIN_SAMPLES} samples "
            f"= {MIN_SAMPLES / SAMPLE_RATE * 1000:.0f} ms at {SAMPLE_RATE} Hz)"
        )
    if not x.is_floating_point():
        raise ValueError(f"{where}: expected float samples in [-1, 1], got dtype {x.dtype}")
    return x.to(torch.float32)


def batch_features(
    audios: Sequence[np.ndarray | torch.Tensor],
    n_mels: int = 128,
    *,
    device: torch.device | str | None = None,
    padding_value: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel features of several 16 kHz waveforms, padded to the longest.

    Returns ``features[B, n_mels, T_max]`` (float32) and ``feature_attention_mask[B, T_max]`` (int64,
    1 on the ``N_b // 160`` real frames of item b). Padded frames hold ``padding_value``; consumers
    must use the mask. Every item is analysed as if it were alone (reflection padding at its own ends,
    its own ``max - 8`` floor), so batching never changes an item's features.
    """
    if len(audios) == 0:
        raise ValueError("batch_features needs at least one waveform")
    return _features([_as_tensor(a, i) for i, a in enumerate(audios)], n_mels, device, padding_value)


def _features(waves: list[torch.Tensor], n_mels: int, device: torch.device | str | None,
              padding_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    dev = torch.device(device) if device is not None else waves[0].device
    half = N_FFT // 2
    lengths = [w.numel() // HOP_LENGTH for w in waves]
    t_max = max(lengths)
    # Centre each item by reflecting its own ends (like torch.stft(center=True)), then zero-pad to a
    # common length and frame without centring; frames past an item's end are masked out below.
    padded = [F.pad(w.to(dev)[None, None], (half, half), mode="reflect")[0, 0] for w in waves]
    width = (t_max - 1) * HOP_LENGTH + N_FFT
    stack = torch.zeros(len(waves), width, dtype=torch.float32, device=dev)
    for i, p in enumerate(padded):
        n = min(p.numel(), width)
        stack[i, :n] = p[:n]
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float32, device=dev)
    spec = torch.stft(stack, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
    power = spec.abs().pow(2)  # [B, n_fft//2+1, T_max]
    mel = mel_filters(n_mels).to(dev) @ power  # [B, n_mels, T_max]
    log_spec = mel.clamp_min(_LOG_FLOOR).log10()

    mask = torch.arange(t_max, device=dev)[None, :] < torch.tensor(lengths, device=dev)[:, None]
    masked = log_spec.masked_fill(~mask[:, None, :], float("-inf"))
    peak = masked.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - _DYNAMIC_RANGE)
    feats = ((log_spec + 4.0) / 4.0).masked_fill(~mask[:, None, :], padding_value)
    return feats.contiguous(), mask.to(torch.long)


def log_mel(audio: np.ndarray | torch.Tensor, n_mels: int = 128, *,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Whisper log-mel spectrogram ``[n_mels, N // 160]`` of one 16 kHz waveform, without padding."""
    feats, _ = _features([_as_tensor(audio)], n_mels, device, 0.0)
    return feats[0]
