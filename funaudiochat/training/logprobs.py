"""Per-sequence log-probabilities of a reply under the text head and the Speech Refined Head (for DPO).

The forward pass returns text logits and, for spoken replies, SRH logits with ``speech_labels``; it does
not return the text targets it trained on, in which a spoken reply's ``<|AUDIO|>`` placeholders are
replaced by the aligned transcript (``modeling/targets.py``).  :func:`text_targets` rebuilds them from
the batch with the same public functions the model uses; the tests check that the cross-entropy over
them equals the forward's ``text_loss``, so any drift from the model shows up there.
"""

from __future__ import annotations

import torch

from funaudiochat.modeling.grouping import pad_to_multiple
from funaudiochat.modeling.targets import (
    aligned_text_slots,
    build_targets,
    group_counts,
    match_runs,
    srh_teacher_inputs,
)
from funaudiochat.training.dpo import combine_text_speech_logprobs, sequence_logprobs


def text_targets(config, batch: dict) -> torch.Tensor:
    """Text labels [B, L] as the model scores them (labels with spoken replies' transcripts filled in)."""
    labels = batch["labels"]
    if "speech_ids" not in batch:
        return labels
    k = config.audio_config.group_size
    pad = config.audio_config.pad_token_id
    mask = batch.get("speech_attention_mask")
    speech_ids = batch["speech_ids"]
    if mask is None:
        mask = torch.ones_like(speech_ids)
    speech_ids = pad_to_multiple(speech_ids.masked_fill(mask == 0, pad), k, pad)
    speech_mask = pad_to_multiple(mask, k, 0)
    runs = match_runs(batch["input_ids"], config.audio_token_index, group_counts(speech_mask.sum(-1), k))
    end_ids = tuple(i for i in (config.text_config.eos_token_id, config.text_config.pad_token_id) if isinstance(i, int))
    text_ids, text_mask = batch.get("text_ids"), batch.get("text_attention_mask")
    slots: list[torch.Tensor | None] = []
    for i, run in enumerate(runs):
        has_text = (
            text_ids is not None and i < text_ids.shape[0] and (text_mask is None or bool(text_mask[i].any()))
        )
        if has_text:
            m = text_mask[i] if text_mask is not None else torch.ones_like(text_ids[i])
            slots.append(aligned_text_slots(text_ids[i], m, run.length, config.sil_id, end_ids))
        else:
            slots.append(None)
    text_labels, _ = build_targets(
        batch["input_ids"], labels, runs, speech_ids, speech_mask, slots,
        k=k, audio_eos_id=config.audio_eos_id, speech_eos_id=config.audio_config.eos_token_id,
        ignore_index=config.ignore_index,
    )
    return text_labels


def speech_targets(speech_labels: torch.Tensor, k: int, ignore_index: int = -100) -> torch.Tensor:
    """SRH targets aligned with ``speech_logits`` (sub-frame i predicts the label k positions later)."""
    return srh_teacher_inputs(speech_labels, k, ignore_index)[1]


def reply_logprobs(
    config,
    batch: dict,
    output,
    text_weight: float = 1.0,
    speech_weight: float = 1.0,
    average: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(text, speech or None, combined) log-probs [B] of the labelled reply in each row."""
    ignore = config.ignore_index
    text = sequence_logprobs(output.logits, text_targets(config, batch), ignore_index=ignore, shift=1, average=average)
    speech = None
    if output.speech_logits is not None and output.speech_labels is not None:
        targets = speech_targets(output.speech_labels, config.audio_config.group_size, ignore)
        speech = sequence_logprobs(output.speech_logits, targets, ignore_index=ignore, shift=0, average=average)
    return text, speech, combine_text_speech_logprobs(text, speech, text_weight, speech_weight)
