"""Generation: conversations, joint text/speech decoding, sampling and streaming events."""

from funaudiochat.generation.engine import Engine, Turn, TurnOptions
from funaudiochat.generation.events import AudioChunk, EndOfTurn, SpeechTokens, TextDelta
from funaudiochat.generation.sampling import SamplingConfig
from funaudiochat.generation.state import Conversation

__all__ = [
    "AudioChunk",
    "Conversation",
    "EndOfTurn",
    "Engine",
    "SamplingConfig",
    "SpeechTokens",
    "TextDelta",
    "Turn",
    "TurnOptions",
]
