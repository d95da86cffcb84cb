"""The untrained skeleton of ``funaudiochat-tiny``, built from pip parts only.

:func:`funaudiochat.modeling.build.assemble_from_parts` with the speech codebook of the
1024-token :class:`KMeansSpeechTokenizer`, plus 4 control ids (BOS/delay 1024, EOS 1025, pad 1026).  The build and the loader both start here, so the shipped
weights always land on the same structure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

SPEECH_CODEBOOK = 1024
#: The pip Whisper encoders the model can start from, with their shapes (checked against the pip
#: weights whenever they are loaded).  Session 17 found that a frozen base hears more content words
#: of real speech than tiny.en under the same readout (docs/default-model-history.md).
ENCODER_SHAPES: dict[str, dict[str, int]] = {
    "tiny.en": dict(num_mel_bins=80, d_model=384, encoder_layers=4, encoder_attention_heads=6,
                    encoder_ffn_dim=1536, max_source_positions=1500),
    "base": dict(num_mel_bins=80, d_model=512, encoder_layers=6, encoder_attention_heads=8,
                 encoder_ffn_dim=2048, max_source_positions=1500),
}
ENCODER_NAME = "tiny.en"


def frozen_whisper_prefixes(encoder: str, trainable_layers: int) -> tuple[str, ...]:
    """Parameter prefixes of the Whisper parts kept as pip ships them when only the top ``trainable_layers``
    layers train (with the final layer norm, unless none does); never the adapter behind them."""
    n = ENCODER_SHAPES[encoder]["encoder_layers"]
    if not 0 <= trainable_layers <= n:
        raise ValueError(f"Whisper {encoder} has {n} layers; trainable layers must be 0 to {n}, got {trainable_layers}")
    kept = ["conv1", "conv2", *(f"layers.{i}" for i in range(n - trainable_layers))]
    return tuple(f"continuous_audio_tower.{m}." for m in kept + ([] if trainable_layers else ["ln_post"]))
#: A small Qwen3 body for the Speech Refined Head (the released SRH is Qwen3-0.6B).
SRH_CONFIG: dict[str, Any] = {
    "model_type": "qwen3", "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "max_position_embeddings": 8192, "vocab_size": 16, "tie_word_embeddings": False,
}
GROUP_SIZE = 5


def assemble_default(backbone_dir: str | Path | None = None, encoder_weights: bool = True, seed: int = 0,
                     speech_adapter: str = "linear", initialise: bool = True, encoder: str = ENCODER_NAME,
                     ctc_spelling_buckets: int = 0, ctc_spelling_bags: tuple | None = None):
    """(model, tokenizer, original_vocab) around SmolLM2-135M-Instruct and a pip Whisper encoder.

    ``encoder_weights=False`` builds the encoder with the right shape but random weights (the loader
    overwrites them from the shipped file).  ``seed`` fixes the fresh modules and new embedding rows.
    ``speech_adapter`` is the ``continuous_adapter`` mode; ``vocab_ctc`` reads over the backbone's
    original vocabulary (not the tokens added for audio).  ``initialise=False`` is for the loader,
    which overwrites every new tensor: the added tokens' embedding rows are not fitted (0.8 s) and the
    speech parts are not drawn at random (0.4 s).
    ``encoder`` is a key of :data:`ENCODER_SHAPES`.  ``ctc_spelling_buckets`` > 0 gives the
    ``vocab_ctc`` adapter a spelling table (``modeling/vocab_adapter.py``), with ``ctc_spelling_bags``
    as its ready-made ``(index, offsets)`` when given (``assemble_from_parts``).
    """
    from funaudiochat.pretrained import smollm2_backbone_dir

    if encoder not in ENCODER_SHAPES:
        raise ValueError(f"unknown speech encoder {encoder!r}; choose one of {sorted(ENCODER_SHAPES)}")
    backbone_dir = Path(backbone_dir) if backbone_dir is not None else smollm2_backbone_dir()
    # Seeded without disturbing the caller's random state (the loader is called from user code).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _assemble(backbone_dir, encoder_weights, speech_adapter, initialise, encoder, ctc_spelling_buckets,
                         ctc_spelling_bags)


def _assemble(backbone_dir: Path, encoder_weights: bool, speech_adapter: str, initialise: bool, encoder: str,
              ctc_spelling_buckets: int, ctc_spelling_bags: tuple | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from funaudiochat.modeling.build import EncoderSpec, assemble_from_parts
    from funaudiochat.pretrained import whisper_encoder

    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    lm = AutoModelForCausalLM.from_pretrained(backbone_dir, dtype=torch.float32)
    original_vocab = lm.get_input_embeddings().weight.shape[0]
    shape = ENCODER_SHAPES[encoder]
    if encoder_weights:
        spec = whisper_encoder(encoder)
        got = {k: getattr(spec, k) for k in shape}
        if got != shape:
            raise ValueError(f"Whisper {encoder} weights have shape {got}, expected {shape}")
    else:
        spec = EncoderSpec(**shape)
    model, tokenizer = assemble_from_parts(
        lm, tokenizer=tokenizer, encoder=spec, srh_config=dict(SRH_CONFIG), group_size=GROUP_SIZE,
        audio_overrides=dict(codebook_size=SPEECH_CODEBOOK + 4, bos_token_id=SPEECH_CODEBOOK,
                             eos_token_id=SPEECH_CODEBOOK + 1, pad_token_id=SPEECH_CODEBOOK + 2),
        continuous_adapter=speech_adapter, mean_resizing=initialise, ctc_spelling_buckets=ctc_spelling_buckets,
        ctc_spelling_bags=ctc_spelling_bags, init_fresh_parts=initialise,
    )
    return model.float().eval(), tokenizer, original_vocab
