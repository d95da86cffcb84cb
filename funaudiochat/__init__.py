"""funaudiochat: an open implementation of Fun-Audio-Chat, a speech-text LLM for voice conversation."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from funaudiochat.config import (
    FunAudioChatAudioEncoderConfig,
    FunAudioChatConfig,
    released_8b_config,
    tiny_config,
)
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    """Make ``AutoConfig``/``AutoModel``/``AutoModelForCausalLM`` resolve ``model_type: funaudiochat``.

    ``exist_ok`` keeps a second import (or a transformers release that learns the type) harmless.
    """
    AutoConfig.register(FunAudioChatConfig.model_type, FunAudioChatConfig, exist_ok=True)
    AutoConfig.register(FunAudioChatAudioEncoderConfig.model_type, FunAudioChatAudioEncoderConfig, exist_ok=True)
    AutoModel.register(FunAudioChatConfig, FunAudioChatForConditionalGeneration, exist_ok=True)
    AutoModelForCausalLM.register(FunAudioChatConfig, FunAudioChatForConditionalGeneration, exist_ok=True)


_register_auto_classes()

__all__ = [
    "FunAudioChatAudioEncoderConfig",
    "FunAudioChatConfig",
    "FunAudioChatForConditionalGeneration",
    "released_8b_config",
    "tiny_config",
]
