"""Reading, checking and writing audio for the speech encoder.

Everything that enters the model goes through :func:`load_audio` (files or encoded bytes) or
:func:`validate_waveform` (arrays already in memory), so bad input fails early with one error type,
:class:`AudioError`, whose message names the source and the problem instead of surfacing later as a
shape error or NaN logits deep inside the encoder.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .frames import SAMPLE_RATE  # the rate the Whisper front end and the speech encoder expect

logger = logging.getLogger(__name__)

DEFAULT_MAX_SECONDS = 360.0
"""Longest input accepted by default.

The LLM sees speech at 5 Hz; 2048 positions hold 409.6 s of audio, and 360 s (6 minutes) leaves room
for the prompt and the reply.
"""

SILENCE_THRESHOLD = 1e-4
"""A waveform whose every sample has ``|x| <`` this is treated as silent (an empty recording)."""

_CONTEXT_NOTE = "the model's context holds about 6 minutes (2048 LLM positions at 5 Hz)"


class AudioError(ValueError):
    """Audio input that cannot be used: missing, empty, corrupt, silent, non-finite or too long."""


class AudioFileNotFoundError(AudioError, FileNotFoundError):
    """A missing audio file; catchable both as :class:`AudioError` and as ``FileNotFoundError``."""


AudioSource = str | os.PathLike[str] | bytes | bytearray | memoryview


def _describe(source: AudioSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of audio>"
    return str(source)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average channels of a ``[frames, channels]`` array; 1-D input is returned unchanged."""
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise AudioError(f"expected a 1-D or [frames, channels] array, got shape {audio.shape}")
    return audio.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample 1-D float audio with soxr's high-quality filter (no-op when the rates match)."""
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return np.ascontiguousarray(audio, dtype=np.float32)
    out = soxr.resample(np.ascontiguousarray(audio, dtype=np.float32), orig_sr, target_sr, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


def _as_float32(x: np.ndarray, what: str) -> np.ndarray:
    """Integer PCM is scaled to [-1, 1); floats are cast. Anything else is refused."""
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=False)
    if np.issubdtype(x.dtype, np.signedinteger):
        return (x.astype(np.float64) / float(-np.iinfo(x.dtype).min)).astype(np.float32)
    if np.issubdtype(x.dtype, np.unsignedinteger):  # e.g. 8-bit WAV: offset binary
        info = np.iinfo(x.dtype)
        mid = (int(info.max) + 1) / 2.0
        return ((x.astype(np.float64) - mid) / mid).astype(np.float32)
    raise AudioError(f"{what}: unsupported sample dtype {x.dtype}")


def _check_duration(n_samples: int, sr: int, max_seconds: float | None, what: str) -> None:
    if max_seconds is not None and n_samples / sr > max_seconds:
        raise AudioError(
            f"{what}: audio is {n_samples / sr:.1f} s long, over the limit of {max_seconds:g} s; "
            f"{_CONTEXT_NOTE}. Split the audio or raise max_seconds."
        )


def validate_waveform(
    audio: np.ndarray,
    sr: int,
    *,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    name: str = "waveform",
) -> np.ndarray:
    """Check an in-memory waveform and return it as contiguous float32.

    Accepts 1-D mono or ``[frames, channels]`` (averaged to mono); integer PCM is scaled to [-1, 1).
    The sample rate is not changed here (use :func:`resample`). Raises :class:`AudioError` for empty,
    non-finite, silent or over-long audio.
    """
    if not isinstance(audio, np.ndarray):
        audio = np.asarray(audio)
    if not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise AudioError(f"{name}: sample rate must be a positive integer, got {sr!r}")
    x = to_mono(_as_float32(audio, name)) if audio.ndim == 2 else audio
    if x.ndim != 1:
        raise AudioError(f"{name}: expected a 1-D or [frames, channels] array, got shape {audio.shape}")
    x = _as_float32(x, name)
    if x.size == 0:
        raise AudioError(f"{name}: audio contains zero samples")
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise AudioError(
            f"{name}: {int((~finite).sum())} NaN/Inf samples (first at sample {bad}, {bad / sr:.3f} s)"
        )
    _check_duration(x.size, int(sr), max_seconds, name)
    peak = float(np.max(np.abs(x)))
    if peak < SILENCE_THRESHOLD:
        raise AudioError(
            f"{name}: audio is silent (peak |x| = {peak:.2e} < {SILENCE_THRESHOLD:g} over "
            f"{x.size / sr:.2f} s); check the microphone or the file"
        )
    return np.ascontiguousarray(x)


def _decode_with_soundfile(
    data: io.BytesIO | str, max_seconds: float | None, what: str
) -> tuple[np.ndarray, int]:
    with sf.SoundFile(data) as f:
        sr = int(f.samplerate)
        if f.frames == 0:
            raise AudioError(f"{what}: file contains zero samples ({f.format} container)")
        # The header gives the length, so refuse over-long files before decoding them.
        _check_duration(int(f.frames), sr, max_seconds, what)
        audio = f.read(dtype="float32", always_2d=True)
    if audio.shape[0] == 0:
        raise AudioError(f"{what}: file contains zero samples")
    return audio, sr


def _decode_with_ffmpeg(
    data: bytes | str, target_sr: int, what: str
) -> tuple[np.ndarray, int] | None:
    """Decode anything ffmpeg understands to mono float32 at ``target_sr``; None without ffmpeg."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    src = "pipe:0" if isinstance(data, bytes) else data
    cmd = [exe, "-nostdin", "-v", "error", "-i", src, "-f", "f32le", "-ac", "1", "-ar", str(target_sr),
           "-acodec", "pcm_f32le", "pipe:1"]
    proc = subprocess.run(cmd, input=data if isinstance(data, bytes) else None, capture_output=True,
                          check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AudioError(f"{what}: ffmpeg could not decode it: {msg[-1] if msg else 'unknown error'}")
    return np.frombuffer(proc.stdout, dtype="<f4").copy(), target_sr


def load_audio(
    source: AudioSource,
    target_sr: int = SAMPLE_RATE,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    *,
    name: str | None = None,
) -> np.ndarray:
    """Read a file path or encoded bytes into float32 mono at ``target_sr``.

    WAV/FLAC/OGG (anything libsndfile reads) are decoded with soundfile; other formats go through an
    ``ffmpeg`` subprocess when ffmpeg is installed. Channels are averaged and the rate converted with
    soxr (HQ). ``name`` overrides how the source is named in error messages (useful for bytes).

    Raises :class:`AudioError` (a ValueError; :class:`AudioFileNotFoundError` for a missing path, also
    a FileNotFoundError) for missing, empty, undecodable, silent, non-finite or over-long audio
    (``max_seconds=None`` disables the limit).
    """
    what = _describe(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        payload: bytes | str = bytes(source)
        if len(payload) == 0:
            raise AudioError(f"{what}: empty input (0 bytes)")
    else:
        path = Path(source)
        if not path.exists():
            raise AudioFileNotFoundError(f"{what}: audio file not found")
        if path.is_dir():
            raise AudioError(f"{what}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"{what}: file is empty (0 bytes)")
        payload = str(path)

    try:
        audio, sr = _decode_with_soundfile(
            io.BytesIO(payload) if isinstance(payload, bytes) else payload, max_seconds, what
        )
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        decoded = _decode_with_ffmpeg(payload, target_sr, what)
        if decoded is None:
            raise AudioError(
                f"{what}: could not decode audio ({err}); soundfile reads WAV/FLAC/OGG, "
                "install ffmpeg for other formats"
            ) from err
        audio, sr = decoded
        logger.debug("%s: decoded with ffmpeg after soundfile failed (%s)", what, err)
        if audio.size == 0:
            raise AudioError(f"{what}: file contains zero samples") from err

    mono = to_mono(audio) if audio.ndim == 2 else audio
    # Validate at the source rate so the reported times refer to the file, then resample.
    mono = validate_waveform(mono, sr, max_seconds=max_seconds, name=what)
    return resample(mono, sr, target_sr)


def audio_seconds(path: str | os.PathLike[str]) -> float:
    """Length of an audio file from its header, without decoding it; for ordering work by size.

    Files soundfile cannot read (formats only ffmpeg decodes) are estimated from their size as
    16 kHz 16-bit mono, which is close enough to sort by; a missing file raises
    :class:`AudioFileNotFoundError`.
    """
    p = Path(path)
    if not p.is_file():
        raise AudioFileNotFoundError(f"{p}: audio file not found")
    try:
        info = sf.info(str(p))
        return info.frames / info.samplerate if info.samplerate else 0.0
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return p.stat().st_size / (2 * SAMPLE_RATE)


def save_wav(
    path: str | os.PathLike[str],
    audio: np.ndarray,
    sr: int = SAMPLE_RATE,
    *,
    subtype: str | None = None,
) -> Path:
    """Write audio atomically (temp file in the same folder, then ``os.replace``).

    A crash mid-write never leaves a truncated file under the final name. The container follows the
    suffix (``.wav``, ``.flac``, ``.ogg``); ``subtype`` defaults to 16-bit PCM (Vorbis for .ogg).
    Float audio beyond [-1, 1] is clipped for integer subtypes, with a warning.
    """
    target = Path(path)
    x = np.asarray(audio)
    if x.ndim not in (1, 2) or x.size == 0:
        raise AudioError(f"{target}: cannot save audio of shape {x.shape}")
    x = _as_float32(x, str(target))
    if not np.isfinite(x).all():
        raise AudioError(f"{target}: refusing to save NaN/Inf samples")
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(target.suffix.lower())
    if fmt is None:
        raise AudioError(f"{target}: unsupported suffix {target.suffix!r} (use .wav, .flac or .ogg)")
    if subtype is None:
        subtype = "VORBIS" if fmt == "OGG" else "PCM_16"
    if subtype.startswith("PCM"):
        peak = float(np.max(np.abs(x)))
        if peak > 1.0:
            logger.warning("%s: clipping audio with peak %.3f to [-1, 1] for %s", target, peak, subtype)
            x = np.clip(x, -1.0, 1.0)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            sf.write(fh, x, int(sr), subtype=subtype, format=fmt)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; audio files are meant to be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
