"""Assemble a Fun-Audio-Chat model from pretrained parts (how training starts).

A pretrained causal LM becomes the backbone, a Whisper encoder the speech encoder, and the grouping
module and SRH start fresh.  The special text tokens are added to the tokenizer (and the LM's
embedding table grown) only when the vocabulary lacks them, so Qwen3 keeps its released ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from funaudiochat.config import (
    SPECIAL_TEXT_TOKENS,
    FunAudioChatAudioEncoderConfig,
    FunAudioChatConfig,
)
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.modeling.vocab_adapter import spelling_bags

logger = logging.getLogger(__name__)

#: Encoder parameters that a Whisper checkpoint does not provide (the adapter is new).
ENCODER_NEW_PARAMS = ("proj.weight", "proj.bias", "audio_bos_eos_token.weight")


@dataclass
class EncoderSpec:
    """Shape of the Whisper encoder to build, and optionally its weights in our naming."""

    num_mel_bins: int = 128
    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    max_source_positions: int = 1500
    state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)


def ensure_special_tokens(tokenizer: Any) -> dict[str, int]:
    """Add the audio special tokens the tokenizer lacks; return every token's id."""
    missing = [t for t in SPECIAL_TEXT_TOKENS if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        logger.info("added special tokens %s to the tokenizer", missing)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TEXT_TOKENS}


def token_spellings(tokenizer: Any, n: int) -> list[str]:
    """How each of the first ``n`` token ids reads as text (a leading space included)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    return [tokenizer.convert_tokens_to_string([p]) for p in pieces]


def assemble_from_parts(
    backbone: str | Path | PreTrainedModel,
    tokenizer: Any | None = None,
    encoder: EncoderSpec | None = None,
    srh_config: dict | None = None,
    group_size: int = 5,
    grouping_mode: str = "mean",
    backbone_kwargs: dict | None = None,
    audio_overrides: dict | None = None,
    continuous_adapter: str = "linear",
    mean_resizing: bool = True,
    ctc_spelling_buckets: int = 0,
    ctc_spelling_bags: tuple[torch.Tensor, torch.Tensor] | None = None,
    init_fresh_parts: bool = True,
    **config_overrides: Any,
) -> tuple[FunAudioChatForConditionalGeneration, Any]:
    """Build a model around a pretrained causal LM.

    ``backbone`` is a directory (loaded with ``AutoModelForCausalLM.from_pretrained``) or a loaded
    model; ``tokenizer`` defaults to the directory's.  Returns the model and the tokenizer, which
    now knows the audio tokens.  ``audio_overrides`` sets other audio-config fields, e.g. a speech
    codebook that matches the speech tokenizer in use.  ``continuous_adapter="vocab_ctc"`` gives the
    model a CTC adapter over the token ids below the first audio token (the backbone's own vocabulary).
    ``mean_resizing=False`` skips transformers' fitting of the new embedding rows to the old ones'
    statistics, for callers that overwrite those rows anyway (a covariance of the whole table).
    ``ctc_spelling_buckets`` > 0 gives that adapter a spelling table over the tokenizer's spellings
    (``modeling/vocab_adapter.py``); ``ctc_spelling_bags`` hands in its ``(index, offsets)`` ready-made
    (a loader that ships them skips the 0.8 s of hashing SmolLM2's 49,152 spellings).
    ``init_fresh_parts=False`` allocates the new parts (encoder, grouping, SRH, adapters) without
    drawing their random weights, for a loader that overwrites every one of their saved tensors
    (0.4 s of each load of the default model); the values they hold until then are arbitrary.  The
    added tokens' rows of a tied embedding table are then zeros (not drawn: 0.3 s more).
    """
    if ctc_spelling_buckets and continuous_adapter != "vocab_ctc":
        raise ValueError("ctc_spelling_buckets needs continuous_adapter='vocab_ctc'")
    backbone_kwargs = dict(backbone_kwargs or {})
    if not isinstance(backbone, PreTrainedModel):
        if tokenizer is None:
            tok_kwargs = {k: v for k, v in backbone_kwargs.items() if k == "gguf_file"}
            tokenizer = AutoTokenizer.from_pretrained(backbone, **tok_kwargs)
        backbone = AutoModelForCausalLM.from_pretrained(backbone, **backbone_kwargs)
    if tokenizer is None:
        raise ValueError("a loaded backbone needs its tokenizer passed explicitly")
    ids = ensure_special_tokens(tokenizer)
    vocab = backbone.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        if init_fresh_parts or not _grow_tied_vocab(backbone, len(tokenizer)):
            backbone.resize_token_embeddings(len(tokenizer), mean_resizing=mean_resizing)
    text_config = backbone.config
    # Wrapping the backbone's config in the composite config resets its attention implementation.
    attn_implementation = text_config._attn_implementation or "sdpa"
    text_config.audio_bos_index = ids["<|audio_bos|>"]
    text_config.audio_eos_index = ids["<|audio_eos|>"]
    text_config.sil_index = ids["<|sil|>"]

    enc = encoder or EncoderSpec()
    hidden = text_config.hidden_size
    audio_config = FunAudioChatAudioEncoderConfig(
        num_mel_bins=enc.num_mel_bins,
        d_model=enc.d_model,
        encoder_layers=enc.encoder_layers,
        encoder_attention_heads=enc.encoder_attention_heads,
        encoder_ffn_dim=enc.encoder_ffn_dim,
        max_source_positions=enc.max_source_positions,
        output_dim=hidden,
        group_size=group_size,
        grouping_mode=grouping_mode,
        crq_transformer_config=srh_config,
        continuous_adapter=continuous_adapter,
        ctc_vocab_size=min(ids.values()) if continuous_adapter == "vocab_ctc" else None,
        **(audio_overrides or {}),
    )
    bags = None
    if ctc_spelling_bags is not None and not ctc_spelling_buckets:
        raise ValueError("ctc_spelling_bags needs ctc_spelling_buckets > 0")
    if ctc_spelling_buckets:
        bags = ctc_spelling_bags
        if bags is None:
            bags = spelling_bags(token_spellings(tokenizer, audio_config.ctc_vocab_size), ctc_spelling_buckets)
        elif bags[1].numel() != audio_config.ctc_vocab_size:
            raise ValueError(f"ctc_spelling_bags spell {bags[1].numel()} tokens; the CTC vocabulary has "
                             f"{audio_config.ctc_vocab_size}")
        audio_config.ctc_spelling_buckets = ctc_spelling_buckets
        audio_config.ctc_spelling_grams = int(bags[0].numel())
    config = FunAudioChatConfig(
        audio_config=audio_config,
        text_config=text_config,
        audio_token_index=ids["<|AUDIO|>"],
        **config_overrides,
    )
    if init_fresh_parts:
        model = FunAudioChatForConditionalGeneration(config, language_model=backbone)
    else:
        model = _uninitialised_around(config, backbone)
    if bags is not None:
        model.speech_vocab_adapter.set_bags(*bags)
    # Our encoder always uses SDPA; saying so up front spares transformers' warning that it cannot
    # check a sub-config without a sub-model.
    config.audio_config._attn_implementation = attn_implementation
    model.set_attn_implementation(attn_implementation)
    if enc.state_dict is not None:
        result = model.continuous_audio_tower.load_state_dict(enc.state_dict, strict=False)
        missing = sorted(set(result.missing_keys) - set(ENCODER_NEW_PARAMS))
        if missing or result.unexpected_keys:
            raise ValueError(
                f"encoder weights do not fit: missing {missing}, unexpected {sorted(result.unexpected_keys)}"
            )
    return model.to(backbone.dtype), tokenizer


def _uninitialised_around(config: FunAudioChatConfig, backbone: PreTrainedModel) -> FunAudioChatForConditionalGeneration:
    """The model around ``backbone`` with its new parts built on the meta device, then given real
    but unwritten memory.  Buffers that are computed rather than saved (rotary frequencies, the
    encoder's sinusoids) are computed again by the model's own initialisation."""
    with torch.device("meta"):
        model = FunAudioChatForConditionalGeneration(config, language_model=backbone)
    device = backbone.get_input_embeddings().weight.device
    fresh = [child for child in model.children() if child is not backbone]
    for child in fresh:
        child.to_empty(device=device)  # per child, so the backbone keeps its loaded tensors
    model.tie_weights()  # to_empty gave the SRH head its own copy of the speech embedding
    for child in fresh:
        for module in child.modules():
            if module._non_persistent_buffers_set:
                model._init_weights(module)
    return model


def _grow_tied_vocab(lm: PreTrainedModel, n: int) -> bool:
    """Grow a tied embedding table to ``n`` rows, the new ones zero; False (nothing done) if untied.

    What ``resize_token_embeddings`` does for a tied table, less the random draws for a new table
    and a new head that it makes and then throws away.
    """
    emb, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    if not isinstance(emb, torch.nn.Embedding) or head is None or head.weight is not emb.weight:
        return False
    old = emb.weight
    grown = old.new_zeros(n, old.shape[1])
    grown[: old.shape[0]] = old.detach()
    old.data = grown
    emb.num_embeddings = n
    if isinstance(head, torch.nn.Linear):
        head.out_features = n
    lm.config.get_text_config().vocab_size = n
    if hasattr(lm, "vocab_size"):
        lm.vocab_size = n
    lm.tie_weights()
    return True
