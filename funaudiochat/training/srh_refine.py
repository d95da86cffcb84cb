"""Speech Refined Head refinement on cached backbone states.

With the backbone and every input embedding frozen, the SRH's inputs for a record (backbone state +
text embedding per 5 Hz position, previous and target speech token per 25 Hz sub-frame) never
change.  So they are computed once, and the 2-layer head then trains for many epochs at the cost of
the head alone: on the 2-core build machine the cache costs one forward per record (0.3 s), and a
step of 16 replies about 0.45 s, against several seconds for a full-model step of 8.

Each cached row keeps the spoken span of a reply plus ``context_groups`` positions before it (the head
is causal over sub-frames, and the reply's start needs a little context, not the whole prompt).
The default-model build runs this after DPO (``docs/default-model.md``).
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from funaudiochat.modeling.targets import srh_teacher_inputs
from funaudiochat.training.checkpoint import length_grouped

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SRHRow:
    """One reply's SRH inputs: conditions [n, H] (fp16), previous and target ids [k*n]."""

    conditions: torch.Tensor
    prev: torch.Tensor
    targets: torch.Tensor


def srh_rows(model, batch: dict, context_groups: int = 4) -> list[SRHRow]:
    """The SRH inputs of every row of a training batch that has speech targets (no gradients)."""
    k, ignore = model.group_size, model.config.ignore_index
    batch = {key: v for key, v in batch.items() if key != "tasks"}
    with torch.no_grad():
        # The text head is needed only where the loss is (it is 49k wide): the states are what we keep.
        out = model(**batch, compute_speech_logits=False, labelled_logits_only=True)
    if out.speech_labels is None:
        return []
    conditions = (out.last_hidden_state + out.text_embeds).to(torch.float16).cpu()
    prev, targets = srh_teacher_inputs(out.speech_labels.cpu(), k, ignore)
    rows = []
    for r in range(conditions.shape[0]):
        spoken = torch.nonzero(targets[r] != ignore).flatten()
        if spoken.numel() == 0:
            continue
        start = max(0, int(spoken[0]) // k - context_groups)
        end = int(spoken[-1]) // k + 1
        rows.append(SRHRow(conditions[r, start:end].clone(), prev[r, k * start : k * end].clone(),
                           targets[r, k * start : k * end].clone()))
    return rows


def collate_rows(rows: Sequence[SRHRow], k: int, ignore_index: int) -> tuple[torch.Tensor, ...]:
    """Right-padded (conditions [B, L, H] fp32, prev [B, kL], targets [B, kL], mask [B, L])."""
    width = max(r.conditions.shape[0] for r in rows)
    h = rows[0].conditions.shape[1]
    cond = torch.zeros(len(rows), width, h)
    prev = torch.full((len(rows), k * width), ignore_index, dtype=torch.long)
    targets = torch.full_like(prev, ignore_index)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        n = r.conditions.shape[0]
        cond[i, :n] = r.conditions.float()
        prev[i, : k * n] = r.prev
        targets[i, : k * n] = r.targets
        mask[i, :n] = 1
    return cond, prev, targets, mask


def _loss(model, rows: Sequence[SRHRow]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, correct tokens, scored tokens) of the head on ``rows``."""
    ignore = model.config.ignore_index
    cond, prev, targets, mask = collate_rows(rows, model.group_size, ignore)
    dev = next(model.parameters()).device
    cond, prev, targets, mask = cond.to(dev), prev.to(dev), targets.to(dev), mask.to(dev)
    # The cached conditions already hold backbone state + text embedding, so no text term is added.
    logits, loss = model.refined_speech(cond, torch.zeros_like(cond), prev, targets, mask)
    scored = targets != ignore
    return loss, (logits.argmax(-1) == targets)[scored].sum(), scored.sum()


def evaluate_srh(model, rows: Sequence[SRHRow], batch_size: int = 16) -> dict[str, float]:
    """Token-weighted loss and accuracy of the head on ``rows``."""
    was_training = model.training
    model.eval()
    total = correct = count = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            loss, ok, n = _loss(model, rows[i : i + batch_size])
            total += float(loss) * int(n)
            correct += int(ok)
            count += int(n)
    model.train(was_training)
    return {"loss": total / max(count, 1), "accuracy": correct / max(count, 1)}


def reinitialise_head(model, seed: int) -> None:
    """Draw the SRH's weights afresh, except the output table it shares with the speech input side.

    For a head whose inputs change meaning (``config.srh_prev_scale``), or to compare recipes from one
    starting point.  The shared table also embeds the speech fed to the backbone, so it is kept.
    """
    torch.manual_seed(seed)
    head = model.audio_invert_tower
    table = head.lm_head.weight.detach().clone()
    head.apply(model._init_weights)
    with torch.no_grad():
        head.lm_head.weight.copy_(table)


def train_srh(
    model,
    rows: Sequence[SRHRow],
    steps: int,
    batch_size: int = 16,
    lr_max: float = 1e-3,
    lr_min: float = 1e-4,
    warmup_steps: int = 50,
    seed: int = 0,
    val_rows: Sequence[SRHRow] = (),
    eval_every: int = 100,
    metrics_path: str | Path | None = None,
    group_by_length: int = 0,
) -> list[dict]:
    """Train ``model.audio_invert_tower`` alone on cached rows; every other parameter (and the speech
    table the head's output layer shares with the input side) is left as it was.

    ``group_by_length`` N > 1 cuts each shuffled pass into windows of N batches sorted by row length
    (as the trainer's ``data.group_by_length``), so a batch pads little; 0 keeps random batches.

    Returns the logged rows (step, train loss, lr and, every ``eval_every`` steps, the held-out loss
    and accuracy), also appended to ``metrics_path`` as JSON lines.
    """
    from tqdm.auto import tqdm

    from funaudiochat.training.schedules import warmup_cosine_scheduler

    if not rows:
        raise ValueError("no SRH rows to train on (no record has speech targets)")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    # A weight the head shares with the input side (its output layer is tied to the speech-token table
    # that embeds the fed-back speech) stays frozen: changing it would make the cached states stale.
    shared = {id(p) for n, p in model.named_parameters(remove_duplicate=False)
              if not n.startswith("audio_invert_tower.")}
    params = [p for p in model.audio_invert_tower.parameters() if id(p) not in shared]
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr_max, weight_decay=0.01)
    sched = warmup_cosine_scheduler(opt, min(warmup_steps, max(steps - 2, 0)), max(steps - 1, 1), lr_max, lr_min)
    rng = random.Random(seed)
    lengths = [r.conditions.shape[0] for r in rows]
    order: list[int] = []
    log: list[dict] = []
    out = open(metrics_path, "a", encoding="utf-8") if metrics_path else None
    model.train()
    try:
        for step in tqdm(range(1, steps + 1), desc="srh", file=sys.stderr, dynamic_ncols=True):
            if len(order) < batch_size:  # one shuffled pass after another
                shuffled = rng.sample(range(len(rows)), len(rows))
                order += length_grouped(shuffled, lengths, group_by_length * batch_size) if group_by_length > 1 else shuffled
            take, order = order[:batch_size], order[batch_size:]
            lr = sched.get_last_lr()[0]
            loss, _, _ = _loss(model, [rows[i] for i in take])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            entry: dict = {"step": step, "loss": float(loss.detach()), "lr": lr}
            if val_rows and (step % eval_every == 0 or step == steps):
                val = evaluate_srh(model, val_rows, batch_size)
                entry.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                logger.info("srh step %d: train %.3f, held-out loss %.3f, accuracy %.3f",
                            step, entry["loss"], val["loss"], val["accuracy"])
            log.append(entry)
            if out is not None:
                out.write(json.dumps(entry) + "\n")
                out.flush()
            if not math.isfinite(entry["loss"]):
                raise FloatingPointError(f"SRH loss is {entry['loss']} at step {step}")
    finally:
        if out is not None:
            out.close()
        for p, flag in saved:
            p.requires_grad_(flag)
        model.eval()
    return log


def cache_rows(model, batches: Iterable[dict], context_groups: int = 4, total: int | None = None) -> list[SRHRow]:
    """:func:`srh_rows` over many batches, with a progress bar."""
    from tqdm.auto import tqdm

    model.eval()
    rows: list[SRHRow] = []
    for batch in tqdm(batches, total=total, desc="srh cache", file=sys.stderr, dynamic_ncols=True):
        rows += srh_rows(model, batch, context_groups)
    return rows
