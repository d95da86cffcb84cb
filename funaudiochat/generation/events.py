"""What a streaming turn yields, in order of production."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TextDelta:
    """New text of the reply (already decoded)."""

    text: str
    token_ids: list[int]


@dataclass
class SpeechTokens:
    """New 25 Hz speech tokens of the reply (delay tokens and specials removed)."""

    tokens: list[int]


@dataclass
class AudioChunk:
    """Synthesised speech, when the engine has a detokenizer."""

    audio: np.ndarray
    sample_rate: int


@dataclass
class EndOfTurn:
    """The reply is complete; ``reason`` is ``"eos"``, ``"max_duration"`` or ``"cancelled"``."""

    text: str
    speech_tokens: list[int]
    reason: str
    steps: int
    timings: dict[str, float] = field(default_factory=dict)
    tool_calls: list = field(default_factory=list)
    tool_call_errors: list = field(default_factory=list)


Event = TextDelta | SpeechTokens | AudioChunk | EndOfTurn
