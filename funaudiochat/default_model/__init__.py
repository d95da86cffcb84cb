"""Reproducible build of the embedded default model ``funaudiochat-tiny`` (see docs/default-model.md).

The heavy parts (SmolLM2-135M-Instruct backbone, Whisper base encoder) come from pip packages;
only what training changes is shipped, as small fp16 safetensors with a hashed manifest.
"""

from funaudiochat.default_model.package import ManifestError, load_default_model

__all__ = ["ManifestError", "load_default_model"]
