"""The model a recipe starts from, and which of its parameters train.

Kept apart from the loop so that a stage's setup (load, freeze, LoRA) can be checked on its own:
``freeze``/``trainable`` are parameter-name prefixes, and a prefix that matches nothing is an error,
because a typo there would otherwise silently train (or freeze) the wrong modules.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from funaudiochat.training.recipes import LoraSection, ModelSection

logger = logging.getLogger(__name__)


def build_model(section: ModelSection):
    """(model, tokenizer) for a recipe's ``model`` section."""
    from transformers import AutoTokenizer

    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration

    dtype = getattr(torch, section.dtype)
    if section.tiny:
        from funaudiochat.config import tiny_config
        from funaudiochat.testing import word_tokenizer

        torch.manual_seed(section.init_seed)
        model = FunAudioChatForConditionalGeneration(tiny_config()).to(dtype)
        return model, word_tokenizer(vocab_size=512)
    if section.path is not None:
        path = Path(section.path)
        if not path.is_dir():
            raise FileNotFoundError(f"model.path: checkpoint folder not found: {path}")
        kwargs = {"dtype": dtype}
        if section.attn_implementation:
            kwargs["attn_implementation"] = section.attn_implementation
        model = FunAudioChatForConditionalGeneration.from_pretrained(path, **kwargs)
        return model, AutoTokenizer.from_pretrained(path)
    return _from_parts(section, dtype)


def _from_parts(section: ModelSection, dtype: torch.dtype):
    from funaudiochat.modeling.build import EncoderSpec, assemble_from_parts

    parts = section.from_parts
    backbone = Path(parts.backbone)
    if not backbone.is_dir():
        raise FileNotFoundError(f"model.from_parts.backbone: folder not found: {backbone}")
    if parts.whisper or parts.whisper_ct2:
        from funaudiochat.audio import whisper_weights as ww

        src = Path(parts.whisper or parts.whisper_ct2)
        if not src.exists():
            raise FileNotFoundError(f"model.from_parts.whisper: not found: {src}")
        sd, hp = ww.hf_encoder_state_dict(src) if parts.whisper else ww.ct2_encoder_state_dict(src)
        encoder = EncoderSpec(**hp.config_kwargs(), state_dict=sd)
    else:
        try:
            encoder = EncoderSpec(**(parts.encoder or {}))
        except TypeError as exc:
            raise ValueError(f"model.from_parts.encoder: {exc}") from exc
    torch.manual_seed(section.init_seed)  # the adapter, grouping and SRH start from random weights
    kwargs = {"dtype": dtype}
    if section.attn_implementation:
        kwargs["attn_implementation"] = section.attn_implementation
    return assemble_from_parts(
        backbone, encoder=encoder, srh_config=parts.srh, group_size=parts.group_size,
        grouping_mode=parts.grouping_mode, backbone_kwargs=kwargs, continuous_adapter=parts.continuous_adapter,
    )


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(name.startswith(p) for p in prefixes)


def configure_trainable(
    model: torch.nn.Module, freeze: Sequence[str] = (), trainable: Sequence[str] | None = None
) -> list[str]:
    """Set ``requires_grad`` from prefixes; returns the trainable parameter names.

    ``trainable`` (if given) first restricts training to its prefixes, then ``freeze`` removes more.
    """
    names = [n for n, _ in model.named_parameters()]
    for label, prefixes in (("train.freeze", freeze), ("train.trainable", trainable or ())):
        unused = [p for p in prefixes if not any(n.startswith(p) for n in names)]
        if unused:
            tops = sorted({n.split(".")[0] + "." for n in names})
            raise ValueError(f"{label}: prefix(es) {unused} match no parameter (top-level modules: {tops})")
    out = []
    for name, param in model.named_parameters():
        on = trainable is None or _matches(name, trainable)
        on = on and not _matches(name, freeze)
        param.requires_grad_(on)
        if on:
            out.append(name)
    if not out:
        raise ValueError("train.freeze/trainable leave no parameter to train")
    n_on = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    logger.info("training %d of %d parameters (%.1f%%)", n_on, n_all, 100.0 * n_on / max(n_all, 1))
    return out


def apply_lora(model: torch.nn.Module, lora: LoraSection) -> None:
    """Wrap the backbone with peft LoRA adapters; the backbone's own weights are frozen by peft."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("train.lora needs the peft package (pip install peft)") from exc
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
    )
    try:
        model.language_model = get_peft_model(model.language_model, config)
    except ValueError as exc:
        raise ValueError(f"train.lora: {exc}") from exc


def merge_lora_adapters(model: torch.nn.Module) -> None:
    """Fold LoRA adapters into the backbone weights so a plain checkpoint can be saved."""
    lm = model.language_model
    if hasattr(lm, "merge_and_unload"):
        model.language_model = lm.merge_and_unload()


def train_new_token_rows(model: torch.nn.Module, first_row: int) -> list[torch.nn.Parameter]:
    """Let the embedding rows ``first_row:`` train while the rows below stay fixed.

    The input table and, when it is a separate tensor, the output head: both hold a row per added token.
    Returns the parameters so the optimizer can exempt them from weight decay (a masked row must not move).
    """
    lm = model.language_model
    tables = [lm.get_input_embeddings().weight]
    head = lm.get_output_embeddings()
    if head is not None and head.weight is not tables[0]:
        tables.append(head.weight)
    vocab = tables[0].shape[0]
    if not 0 < first_row < vocab:
        raise ValueError(f"train.new_token_rows: {first_row} is not a row of the {vocab}-token embedding table")

    def keep_old_rows(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first_row] = 0
        return grad

    for weight in tables:
        weight.requires_grad_(True)
        weight.register_hook(keep_old_rows)
    logger.info("training embedding rows %d-%d (the added tokens)", first_row, vocab - 1)
    return tables


def trainable_after_lora(model: torch.nn.Module, freeze: Sequence[str], trainable: Sequence[str] | None) -> list[str]:
    """With LoRA the backbone trains only through its adapters; other modules follow the prefixes."""
    names = []
    for name, param in model.named_parameters():
        if name.startswith("language_model."):
            on = "lora_" in name and not _matches(name, freeze)
        else:
            on = (trainable is None or _matches(name, trainable)) and not _matches(name, freeze)
        param.requires_grad_(on)
        if on:
            names.append(name)
    if not names:
        raise ValueError("train.freeze/trainable leave no parameter to train")
    return names
