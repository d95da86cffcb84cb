"""Audio input stack: file/bytes loading and checks, Whisper log-mel features, Whisper weights.

Names are resolved lazily (PEP 562) so that ``import funaudiochat.audio`` stays cheap: torch is only
imported when features or weights are first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AudioError": "io",
    "AudioFileNotFoundError": "io",
    "DEFAULT_MAX_SECONDS": "io",
    "load_audio": "io",
    "validate_waveform": "io",
    "save_wav": "io",
    "resample": "io",
    "to_mono": "io",
    "log_mel": "features",
    "batch_features": "features",
    "mel_filters": "features",
    "mel_frames": "frames",
    "hf_padded_mel_frames": "frames",
    "conv_frames": "frames",
    "pooled_frames": "frames",
    "speech_token_count": "frames",
    "llm_positions": "frames",
    "EncoderHParams": "whisper_weights",
    "read_ct2_model_bin": "whisper_weights",
    "ct2_encoder_state_dict": "whisper_weights",
    "hf_encoder_state_dict": "whisper_weights",
    "to_hf_encoder_state_dict": "whisper_weights",
    "whisper_sinusoids": "whisper_weights",
    "find_pip_whisper": "whisper_weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return __all__
