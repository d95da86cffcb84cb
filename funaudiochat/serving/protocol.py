"""The ``/v1/realtime`` and ``/v1/duplex`` WebSocket protocols: message names, validation and audio framing.

Kept free of any web framework so that the server, the tests, the load benchmark and the spec in
``docs/serving.md`` share one definition.  Client -> server: JSON text frames (control) and binary
frames (raw PCM16 little-endian, 16 kHz, mono: user audio).  Server -> client: JSON text frames
(events) and binary frames (raw PCM16 LE mono at the session's ``output_sample_rate``: reply audio),
each binary frame announced by the ``response.audio.delta`` event sent just before it.

``/v1/duplex`` (full duplex, :data:`DUPLEX_PROTOCOL_VERSION`) uses the same framing in both directions;
its audio headers are ``turn.audio.delta`` events.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = "funaudiochat.realtime.v1"
DUPLEX_PROTOCOL_VERSION = "funaudiochat.duplex.v1"
INPUT_SAMPLE_RATE = 16000
VAD_CHUNK = 512  # silero-vad's window at 16 kHz (32 ms)

#: Client message types and what each one does (the spec lists their fields).
CLIENT_TYPES = (
    "session.update",
    "input_audio.append",
    "input_audio.commit",
    "input_audio.clear",
    "input_text",
    "response.cancel",
    "ping",
)

#: Client message types of ``/v1/duplex``: there are no turns to commit or cancel, the model decides.
DUPLEX_CLIENT_TYPES = (
    "session.update",
    "input_audio.append",
    "interrupt",
    "ping",
)

MODES = ("s2t", "s2s")
TURN_DETECTION = ("server_vad", "none")


class ProtocolError(ValueError):
    """A client message that cannot be used; ``code`` goes into the ``error`` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Sampling:
    """Sampling settings as they travel on the wire (see ``generation.sampling.SamplingConfig``)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


@dataclass
class SessionConfig:
    """Everything a client may set with ``session.update``; unknown keys are refused."""

    mode: str = "s2s"
    voice: str | None = None
    instructions: str | None = None  # the system prompt; None = the mode's default prompt
    turn_detection: str = "server_vad"
    silence_ms: int = 600  # hands-free: this much silence after speech ends the user's turn
    vad_threshold: float = 0.5
    max_output_seconds: float = 30.0
    seed: int | None = 0
    text_sampling: Sampling = field(default_factory=Sampling)
    speech_sampling: Sampling = field(default_factory=lambda: Sampling(0.8, 0, 0.9, 1.2))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any, name: str, lo: float, hi: float, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ProtocolError("invalid_value", f"{name} must be {kind}, got {value!r}")
    if not lo <= value <= hi:
        raise ProtocolError("invalid_value", f"{name} must be in [{lo:g}, {hi:g}], got {value!r}")
    return value


MIN_TEMPERATURE = 1e-2


def greedy_floor(temperature: float) -> float:
    """Temperatures under 0.01 mean greedy: dividing logits by a tiny temperature overflows to inf/NaN."""
    return 0.0 if temperature < MIN_TEMPERATURE else temperature


def _sampling(value: Any, name: str, base: Sampling) -> Sampling:
    if not isinstance(value, dict):
        raise ProtocolError("invalid_value", f"{name} must be an object, got {type(value).__name__}")
    unknown = sorted(set(value) - {"temperature", "top_k", "top_p", "repetition_penalty"})
    if unknown:
        raise ProtocolError("invalid_value", f"{name}: unknown fields {unknown}")
    out = Sampling(**asdict(base))
    if "temperature" in value:
        out.temperature = greedy_floor(float(_number(value["temperature"], f"{name}.temperature", 0, 5)))
    if "top_k" in value:
        out.top_k = int(_number(value["top_k"], f"{name}.top_k", 0, 100000, integer=True))
    if "top_p" in value:
        out.top_p = float(_number(value["top_p"], f"{name}.top_p", 1e-6, 1))
    if "repetition_penalty" in value:
        out.repetition_penalty = float(_number(value["repetition_penalty"], f"{name}.repetition_penalty", 0.01, 10))
    return out


def _check_update_fields(update: Any, config_type: type) -> None:
    """A session update must be an object naming only fields of ``config_type``."""
    if not isinstance(update, dict):
        raise ProtocolError("invalid_value", f"session must be an object, got {type(update).__name__}")
    allowed = set(config_type.__dataclass_fields__)
    unknown = sorted(set(update) - allowed)
    if unknown:
        raise ProtocolError("invalid_value", f"session: unknown fields {unknown}; allowed: {sorted(allowed)}")


def apply_session_update(config: SessionConfig, update: Any, max_output_seconds: float, voices: tuple[str, ...] | None) -> SessionConfig:
    """A new config with ``update`` applied; raises :class:`ProtocolError` naming the bad field."""
    _check_update_fields(update, SessionConfig)
    new = SessionConfig(**{**asdict(config), "text_sampling": config.text_sampling, "speech_sampling": config.speech_sampling})
    if "mode" in update:
        if update["mode"] not in MODES:
            raise ProtocolError("invalid_value", f"session.mode must be one of {list(MODES)}, got {update['mode']!r}")
        new.mode = update["mode"]
    if "voice" in update:
        new.voice = _voice(update["voice"], voices)
    if "instructions" in update:
        new.instructions = _instructions(update["instructions"])
    if "turn_detection" in update:
        if update["turn_detection"] not in TURN_DETECTION:
            raise ProtocolError(
                "invalid_value", f"session.turn_detection must be one of {list(TURN_DETECTION)}, got {update['turn_detection']!r}"
            )
        new.turn_detection = update["turn_detection"]
    if "silence_ms" in update:
        new.silence_ms = int(_number(update["silence_ms"], "session.silence_ms", 100, 5000, integer=True))
    if "vad_threshold" in update:
        new.vad_threshold = float(_number(update["vad_threshold"], "session.vad_threshold", 0.05, 0.95))
    if "max_output_seconds" in update:
        new.max_output_seconds = float(_number(update["max_output_seconds"], "session.max_output_seconds", 0.2, max_output_seconds))
    if "seed" in update:
        new.seed = _seed(update["seed"])
    if "text_sampling" in update:
        new.text_sampling = _sampling(update["text_sampling"], "session.text_sampling", config.text_sampling)
    if "speech_sampling" in update:
        new.speech_sampling = _sampling(update["speech_sampling"], "session.speech_sampling", config.speech_sampling)
    return new


def _voice(voice: Any, voices: tuple[str, ...] | None) -> str | None:
    if voice is not None and not isinstance(voice, str):
        raise ProtocolError("invalid_value", f"session.voice must be a string or null, got {voice!r}")
    if voice and voices is not None and voice not in voices:
        raise ProtocolError("invalid_value", f"session.voice {voice!r} is not one of {list(voices)}")
    return voice or None


def _instructions(text: Any) -> str | None:
    if text is not None and not isinstance(text, str):
        raise ProtocolError("invalid_value", "session.instructions must be a string or null")
    if text is not None and len(text) > 20000:
        raise ProtocolError("invalid_value", f"session.instructions is {len(text)} characters; the limit is 20000")
    return text or None


def _seed(seed: Any) -> int | None:
    return None if seed is None else int(_number(seed, "session.seed", 0, 2**63 - 1, integer=True))


@dataclass
class DuplexSessionConfig:
    """What a ``/v1/duplex`` client may set with ``session.update`` before its first audio.

    Only what the duplex engine uses: the system prompt, voice, seed, sampling, how the action is
    chosen, and whether every step's action is reported.
    """

    instructions: str | None = None  # the system prompt; None = the duplex engine's default prompt
    voice: str | None = None
    seed: int | None = 0
    actions: bool = False  # send an ``action`` event for every 200 ms step
    action_temperature: float = 0.0  # 0: the most likely action; above 0: sampled
    min_start_prob: float = 0.0  # least probability that ``start``/``backchannel`` needs to take the floor
    max_turn_seconds: float = 30.0  # a turn running longer is stopped
    text_sampling: Sampling = field(default_factory=Sampling)
    speech_sampling: Sampling = field(default_factory=lambda: Sampling(0.8, 0, 0.9, 1.2))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def apply_duplex_update(
    config: DuplexSessionConfig, update: Any, max_turn_seconds: float, voices: tuple[str, ...] | None
) -> DuplexSessionConfig:
    """A new duplex config with ``update`` applied; raises :class:`ProtocolError` naming the bad field."""
    _check_update_fields(update, DuplexSessionConfig)
    new = DuplexSessionConfig(**{**asdict(config), "text_sampling": config.text_sampling,
                                 "speech_sampling": config.speech_sampling})
    if "instructions" in update:
        new.instructions = _instructions(update["instructions"])
    if "voice" in update:
        new.voice = _voice(update["voice"], voices)
    if "seed" in update:
        new.seed = _seed(update["seed"])
    if "actions" in update:
        if not isinstance(update["actions"], bool):
            raise ProtocolError("invalid_value", f"session.actions must be true or false, got {update['actions']!r}")
        new.actions = update["actions"]
    if "action_temperature" in update:
        new.action_temperature = greedy_floor(float(_number(update["action_temperature"], "session.action_temperature", 0, 5)))
    if "min_start_prob" in update:
        new.min_start_prob = float(_number(update["min_start_prob"], "session.min_start_prob", 0, 1))
    if "max_turn_seconds" in update:
        new.max_turn_seconds = float(_number(update["max_turn_seconds"], "session.max_turn_seconds", 0.2, max_turn_seconds))
    if "text_sampling" in update:
        new.text_sampling = _sampling(update["text_sampling"], "session.text_sampling", config.text_sampling)
    if "speech_sampling" in update:
        new.speech_sampling = _sampling(update["speech_sampling"], "session.speech_sampling", config.speech_sampling)
    return new


def parse_client_message(text: str, types: tuple[str, ...] = CLIENT_TYPES) -> dict[str, Any]:
    """Decode one JSON text frame into a dict whose ``type`` is one of ``types``."""
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError("invalid_json", f"text frame is not JSON: {err}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("invalid_message", f"a message must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_message", "a message needs a string field 'type'")
    if kind not in types:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}; known: {list(types)}")
    return msg


def decode_pcm16(data: bytes) -> np.ndarray:
    """Raw PCM16 LE bytes -> float32 in [-1, 1); odd byte counts are a framing error."""
    if len(data) % 2:
        raise ProtocolError("invalid_audio", f"binary audio frame has {len(data)} bytes; PCM16 needs an even count")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def decode_base64_pcm16(value: Any) -> np.ndarray:
    """The ``audio`` field of a JSON ``input_audio.append`` (for clients that cannot send binary)."""
    if not isinstance(value, str):
        raise ProtocolError("invalid_audio", "input_audio.append needs 'audio': base64 PCM16 (or send a binary frame)")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ProtocolError("invalid_audio", f"input_audio.append: audio is not valid base64 ({err})") from None
    return decode_pcm16(raw)


def encode_pcm16(audio: np.ndarray) -> bytes:
    """float audio -> PCM16 LE bytes, clipped to [-1, 1]."""
    x = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (x * 32767.0).round().astype("<i2").tobytes()


def event(kind: str, /, **fields: Any) -> str:
    """One server event as a JSON text frame."""
    return json.dumps({"type": kind, **fields}, ensure_ascii=False, allow_nan=False)


def error_event(code: str, message: str, **fields: Any) -> str:
    return event("error", error={"code": code, "message": message, **fields})
