"""Tiny deterministic training run used by test_checkpoint (also runnable as a script to 'crash').

Usage: python resume_worker.py ROOT TOTAL_STEPS [--crash-at STEP] [--resume]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
from pathlib import Path

import numpy as np
import torch

from funaudiochat.training.checkpoint import ResumableSampler, find_latest_checkpoint, load_checkpoint, save_checkpoint
from funaudiochat.training.schedules import warmup_cosine_scheduler

N_SAMPLES, BATCH, SAVE_EVERY = 20, 4, 2


class CrashingOptimizer:
    """Stands in for the optimizer during the fatal save: the process dies half-way through it."""

    def state_dict(self) -> dict:
        os._exit(17)


def train(
    root: Path, total_steps: int, crash_at: int | None = None, resume: bool = False, restore_rng: bool = True
) -> dict[str, torch.Tensor]:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.3), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched = warmup_cosine_scheduler(opt, warmup_steps=2, total_steps=total_steps, lr_max=1e-2, lr_min=1e-3)
    sampler = ResumableSampler(N_SAMPLES, seed=123)
    gen = torch.Generator().manual_seed(7)
    xs = torch.randn(N_SAMPLES, 3, generator=gen)
    ys = torch.randn(N_SAMPLES, 1, generator=gen)
    step = 0
    if resume:
        ckpt = find_latest_checkpoint(root)
        assert ckpt is not None, "nothing to resume from"
        step = load_checkpoint(ckpt, model, opt, sched, sampler, restore_rng=restore_rng)["step"]
    while step < total_steps:
        idx = list(itertools.islice(iter(sampler), BATCH))
        # all three RNGs take part, so each must be restored for an identical continuation
        x = xs[idx] + torch.from_numpy(np.random.normal(size=(len(idx), 3))).float() * 0.01 + random.random() * 0.01
        loss = torch.nn.functional.mse_loss(model(x), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        sampler.advance(len(idx))
        step += 1
        if step % SAVE_EVERY == 0:
            optimizer = CrashingOptimizer() if step == crash_at else opt
            save_checkpoint(root, step, model, optimizer, sched, sampler, extra={"loss": loss.item()}, keep_last=2)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("total_steps", type=int)
    ap.add_argument("--crash-at", type=int)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    train(a.root, a.total_steps, a.crash_at, a.resume)
