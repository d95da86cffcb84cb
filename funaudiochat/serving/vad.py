"""Server-side voice activity detection: when did the user start and stop speaking?

:class:`SileroVAD` runs the ONNX model shipped inside the ``silero-vad`` pip package (nothing is
downloaded) on 512-sample windows at 16 kHz with its recurrent state, through onnxruntime, so no
torchaudio is needed.  :class:`EnergyVAD` is a dependency-free RMS fallback.  :class:`TurnDetector`
turns per-window speech probabilities into ``speech_started`` / ``speech_stopped`` decisions with
hysteresis and a configurable silence duration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from funaudiochat.serving.protocol import INPUT_SAMPLE_RATE, VAD_CHUNK

logger = logging.getLogger(__name__)

_CONTEXT = 64  # silero v5 prepends the previous window's last 64 samples at 16 kHz


class SpeechProbability(Protocol):
    """Scores one 512-sample window; stateful per stream."""

    def __call__(self, window: np.ndarray) -> float: ...

    def reset(self) -> None: ...


def silero_model_path() -> Path:
    """The ``silero_vad.onnx`` file inside the installed ``silero-vad`` package."""
    try:
        import silero_vad
    except ImportError as err:
        raise ImportError("server VAD needs the silero-vad package: pip install silero-vad") from err
    path = Path(silero_vad.__file__).resolve().parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: silero-vad is installed but its ONNX model is missing")
    return path


class SileroSession:
    """The shared onnxruntime session (thread-safe to run); one per server."""

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path or silero_model_path()), sess_options=opts,
                                                    providers=["CPUExecutionProvider"])

    def stream(self) -> "SileroVAD":
        return SileroVAD(self)


class SileroVAD:
    """Speech probability of consecutive 512-sample windows of one audio stream."""

    def __init__(self, shared: SileroSession) -> None:
        self.shared = shared
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(_CONTEXT, dtype=np.float32)

    def __call__(self, window: np.ndarray) -> float:
        if window.shape != (VAD_CHUNK,):
            raise ValueError(f"silero-vad scores windows of {VAD_CHUNK} samples at 16 kHz, got shape {window.shape}")
        x = np.concatenate([self.context, window.astype(np.float32)])[None]
        out, self.state = self.shared.session.run(
            None, {"input": x, "state": self.state, "sr": np.array(INPUT_SAMPLE_RATE, dtype=np.int64)}
        )
        self.context = x[0, -_CONTEXT:]
        return float(out[0, 0])


class EnergyVAD:
    """A crude fallback: maps window RMS (in dBFS) to a pseudo-probability around ``-40 dBFS``."""

    def __init__(self, threshold_db: float = -40.0) -> None:
        self.threshold_db = threshold_db

    def reset(self) -> None:
        pass

    def __call__(self, window: np.ndarray) -> float:
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64)) + 1e-12))
        db = 20 * np.log10(rms)
        return float(1 / (1 + np.exp(-(db - self.threshold_db) / 3)))


@dataclass
class VadEvent:
    kind: str  # "speech_started" | "speech_stopped"
    sample: int  # position in the stream (16 kHz samples) where it happened


class TurnDetector:
    """Hysteresis over window probabilities: start at ``threshold``, stop after ``silence_ms`` below
    ``threshold - 0.15``; speech shorter than ``min_speech_ms`` is ignored as a click."""

    def __init__(self, scorer: SpeechProbability, threshold: float = 0.5, silence_ms: int = 600, min_speech_ms: int = 160) -> None:
        self.scorer = scorer
        self.threshold = threshold
        self.low = max(0.01, threshold - 0.15)
        self.silence_windows = max(1, round(silence_ms * INPUT_SAMPLE_RATE / 1000 / VAD_CHUNK))
        self.min_speech_windows = max(1, round(min_speech_ms * INPUT_SAMPLE_RATE / 1000 / VAD_CHUNK))
        self.buffer = np.zeros(0, dtype=np.float32)
        self.samples = 0
        self.speaking = False
        self.speech_windows = 0
        self.quiet = 0

    def reset(self) -> None:
        self.scorer.reset()
        self.buffer = np.zeros(0, dtype=np.float32)
        self.speaking, self.speech_windows, self.quiet = False, 0, 0

    def push(self, audio: np.ndarray) -> list[VadEvent]:
        """Feed audio of any length; returns the decisions it caused, in order."""
        self.buffer = np.concatenate([self.buffer, audio.astype(np.float32, copy=False)])
        events: list[VadEvent] = []
        while len(self.buffer) >= VAD_CHUNK:
            window, self.buffer = self.buffer[:VAD_CHUNK], self.buffer[VAD_CHUNK:]
            self.samples += VAD_CHUNK
            p = self.scorer(window)
            if not self.speaking:
                if p >= self.threshold:
                    self.speech_windows += 1
                    if self.speech_windows >= self.min_speech_windows:
                        self.speaking, self.quiet = True, 0
                        events.append(VadEvent("speech_started", self.samples - self.speech_windows * VAD_CHUNK))
                else:
                    self.speech_windows = 0
            else:
                self.quiet = self.quiet + 1 if p < self.low else 0
                if self.quiet >= self.silence_windows:
                    self.speaking, self.speech_windows = False, 0
                    events.append(VadEvent("speech_stopped", self.samples - self.quiet * VAD_CHUNK))
        return events


class VadFactory:
    """Makes one scorer per session: silero when the package is there, else the energy fallback."""

    def __init__(self, backend: str = "auto") -> None:
        if backend not in ("auto", "silero", "energy"):
            raise ValueError(f"VAD backend must be 'auto', 'silero' or 'energy', got {backend!r}")
        self.shared: SileroSession | None = None
        if backend in ("auto", "silero"):
            try:
                self.shared = SileroSession()
            except (ImportError, FileNotFoundError) as err:
                if backend == "silero":
                    raise
                logger.warning("silero-vad unavailable (%s); hands-free mode uses a simple energy detector", err)
        self.backend = "silero" if self.shared is not None else "energy"

    def detector(self, threshold: float, silence_ms: int) -> TurnDetector:
        scorer: SpeechProbability = self.shared.stream() if self.shared is not None else EnergyVAD()
        return TurnDetector(scorer, threshold=threshold, silence_ms=silence_ms)
