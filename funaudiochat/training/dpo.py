"""Multi-Task DPO objective (Rafailov et al., 2023) with cDPO label smoothing and the IPO variant.

Model-independent: everything works on per-sequence log-probabilities, so the same code serves the text
head and the Speech Refined Head. ``sequence_logprobs`` turns logits into those numbers,
``combine_text_speech_logprobs`` mixes the two heads, ``dpo_loss`` computes the objective and the usual
reward metrics, and ``aggregate_by_task`` reports them per preference task (robustness,
instruction_following, audio_understanding, empathy), as in the paper's multi-task DPO stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from funaudiochat.training.data import DPO_TASKS

__all__ = [
    "DPO_TASKS",
    "DPOOutput",
    "aggregate_by_task",
    "combine_text_speech_logprobs",
    "dpo_loss",
    "sequence_logprobs",
]


@dataclass
class DPOOutput:
    """Loss (differentiable) and detached per-example metrics."""

    loss: torch.Tensor  # scalar (or per-example when reduction="none")
    losses: torch.Tensor  # [B]
    chosen_rewards: torch.Tensor  # [B] beta * (pi_c - ref_c)
    rejected_rewards: torch.Tensor  # [B] beta * (pi_r - ref_r)
    margins: torch.Tensor  # [B] chosen_rewards - rejected_rewards
    accuracy: torch.Tensor  # scalar: fraction with chosen_rewards > rejected_rewards

    def metrics(self) -> dict[str, torch.Tensor]:
        """Per-example metrics, the input of :func:`aggregate_by_task`."""
        return {
            "loss": self.losses.detach(),
            "chosen_reward": self.chosen_rewards,
            "rejected_reward": self.rejected_rewards,
            "margin": self.margins,
            "accuracy": (self.chosen_rewards > self.rejected_rewards).float(),
        }


def sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    shift: int = 1,
    average: bool = False,
) -> torch.Tensor:
    """Sum (or mean, for IPO) of the log-probabilities of ``labels`` under ``logits``.

    ``logits`` [B, T, V], ``labels`` [B, T]. ``logits[:, t]`` scores ``labels[:, t + shift]``: ``shift=1``
    is the usual causal-LM convention (labels = input ids), ``shift=0`` means already aligned (use 5 for
    the SRH's grouped speech labels if they are not shifted yet). Positions equal to ``ignore_index``
    contribute nothing; a row with no valid label gives 0 (sum) or 0 (mean).
    """
    if logits.ndim != 3 or labels.ndim != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"expected logits [B, T, V] and labels [B, T], got {list(logits.shape)} and {list(labels.shape)}")
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    if shift:
        logits = logits[:, :-shift]
        labels = labels[:, shift:]
    mask = labels != ignore_index
    safe = labels.masked_fill(~mask, 0)
    vocab = logits.shape[-1]
    bad = mask & ((safe < 0) | (safe >= vocab))
    if bad.any():
        b, t = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"label {int(labels[b, t])} at [{b}, {t + shift}] is outside the vocabulary [0, {vocab})")
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    logps = logps * mask
    total = logps.sum(-1)
    if average:
        return total / mask.sum(-1).clamp(min=1)
    return total


def combine_text_speech_logprobs(
    text_logps: torch.Tensor, speech_logps: torch.Tensor | None, text_weight: float = 1.0, speech_weight: float = 1.0
) -> torch.Tensor:
    """Weighted sum of the text-head and speech-head sequence log-probs of the same responses.

    ``speech_logps=None`` (text-only response) uses the text term alone. Speech sequences are ~5x longer
    at 25 Hz, so a speech weight below 1 (or length-averaged inputs) keeps speech from dominating.
    """
    if speech_logps is None:
        return text_weight * text_logps
    if text_logps.shape != speech_logps.shape:
        raise ValueError(f"text and speech log-probs must have the same shape, got {list(text_logps.shape)} and {list(speech_logps.shape)}")
    return text_weight * text_logps + speech_weight * speech_logps


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> DPOOutput:
    """DPO loss from per-sequence log-probs, all shaped [B].

    With ``h = (pi_c - pi_r) - (ref_c - ref_r)``:

    * ``sigmoid`` (DPO, cDPO when ``label_smoothing = eps > 0``):
      ``-(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)``; eps is the assumed
      probability that a preference label is flipped.
    * ``ipo`` (Azar et al., 2023): ``(h - 1 / (2 * beta))**2``; meant for length-averaged log-probs.

    Rewards are ``beta * (pi - ref)`` (detached); accuracy counts ``chosen_reward > rejected_reward``.
    """
    tensors = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"all log-prob tensors must have the same shape [B], got {[list(t.shape) for t in tensors]}")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type == "ipo" and label_smoothing:
        raise ValueError("label_smoothing applies to loss_type='sigmoid' only")
    reference_chosen_logps = reference_chosen_logps.detach()
    reference_rejected_logps = reference_rejected_logps.detach()
    h = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r} (expected 'sigmoid' or 'ipo')")
    if reduction == "mean":
        loss = losses.mean()
    elif reduction == "sum":
        loss = losses.sum()
    elif reduction == "none":
        loss = losses
    else:
        raise ValueError(f"unknown reduction {reduction!r} (expected 'mean', 'sum' or 'none')")
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return DPOOutput(
        loss=loss,
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=chosen_rewards - rejected_rewards,
        accuracy=(chosen_rewards > rejected_rewards).float().mean(),
    )


def aggregate_by_task(
    tasks: Sequence[str | None],
    metrics: Mapping[str, torch.Tensor],
    known_tasks: Sequence[str] | None = DPO_TASKS,
) -> dict[str, dict[str, float]]:
    """Mean of each per-example metric per task tag, plus ``"all"`` and a ``count`` per group.

    Examples without a tag count under ``"untagged"``. With ``known_tasks`` set, an unknown tag is an
    error (catches typos that would otherwise create a silent extra group).
    """
    n = len(tasks)
    for key, value in metrics.items():
        if value.ndim != 1 or value.shape[0] != n:
            raise ValueError(f"metric {key!r} has shape {list(value.shape)}, expected [{n}] (one value per task tag)")
    if known_tasks is not None:
        unknown = sorted({t for t in tasks if t is not None and t not in known_tasks})
        if unknown:
            raise ValueError(f"unknown task tag(s) {unknown}; expected one of {list(known_tasks)}")
    groups: dict[str, list[int]] = {"all": list(range(n))}
    for i, task in enumerate(tasks):
        groups.setdefault(task if task is not None else "untagged", []).append(i)
    out: dict[str, dict[str, float]] = {}
    for name, idx in groups.items():
        if not idx:
            continue
        index = torch.tensor(idx)
        stats = {key: float(value.detach().float()[index].mean()) for key, value in metrics.items()}
        stats["count"] = float(len(idx))
        out[name] = stats
    return out
