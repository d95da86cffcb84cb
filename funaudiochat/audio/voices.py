"""Named speaker embeddings for the embedded detokenizer.

A voice is a learned vector (one row of the detokenizer's speaker table) trained on speech of one
TTS voice.  Requests pick a voice by name; unknown names fail with the list of available ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["TRAINING_VOICES", "DEFAULT_VOICE", "VoiceBank"]

TRAINING_VOICES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "joe": ("piper", "joe"),
    "espeak_f": ("espeak", "en-us+f3:p60"),
    "espeak_m": ("espeak", "en-gb+m3:p40"),
})
"""Voice name -> (TTS engine, engine voice) whose speech trained that voice's embedding."""

DEFAULT_VOICE = "joe"


@dataclass(frozen=True)
class VoiceBank:
    """Ordered voice names; a voice's index is its row in the speaker-embedding table."""

    names: tuple[str, ...]
    default: str = DEFAULT_VOICE

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a VoiceBank needs at least one voice")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate voice names in {self.names}")
        if self.default not in self.names:
            raise ValueError(f"default voice {self.default!r} is not one of {', '.join(self.names)}")

    @classmethod
    def from_names(cls, names: Sequence[str], default: str | None = None) -> VoiceBank:
        names = tuple(names)
        return cls(names, default if default is not None else (DEFAULT_VOICE if DEFAULT_VOICE in names else names[0]))

    def index(self, voice: str | None) -> int:
        """Row of `voice` (None = the default voice)."""
        name = self.default if voice is None else voice
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"unknown voice {name!r}; available voices: {', '.join(self.names)}") from None

    def __contains__(self, voice: object) -> bool:
        return voice in self.names

    def __len__(self) -> int:
        return len(self.names)
