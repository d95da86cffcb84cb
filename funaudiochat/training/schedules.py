"""Learning-rate schedules for Core-Cocktail: linear warmup then cosine decay from lr_max to lr_min.

Stage 1 of the paper decays 1e-4 -> 1e-5 and Stage 2 1e-5 -> 1e-6, both cosine. The schedule is a
picklable callable (not a closure) so ``LambdaLR.state_dict()`` stores its parameters and a resumed
run continues on exactly the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


@dataclass
class WarmupCosine:
    """Multiplier of ``lr_max`` at a given optimizer step.

    * ``step < warmup_steps``: linear from ``warmup_init_ratio`` to 1 (reached at ``warmup_steps``).
    * ``warmup_steps <= step <= total_steps``: ``r + (1 - r) * (1 + cos(pi * p)) / 2`` with
      ``r = lr_min / lr_max`` and ``p = (step - warmup_steps) / (total_steps - warmup_steps)``.
    * ``step >= total_steps``: exactly ``r``.
    """

    warmup_steps: int
    total_steps: int
    lr_max: float
    lr_min: float
    warmup_init_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {self.total_steps}")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={self.total_steps}), got {self.warmup_steps}")
        if not self.lr_max > 0:
            raise ValueError(f"lr_max must be positive, got {self.lr_max}")
        if not 0 <= self.lr_min <= self.lr_max:
            raise ValueError(f"lr_min must be in [0, lr_max={self.lr_max}], got {self.lr_min}")
        if not 0 <= self.warmup_init_ratio <= 1:
            raise ValueError(f"warmup_init_ratio must be in [0, 1], got {self.warmup_init_ratio}")

    @property
    def min_ratio(self) -> float:
        return self.lr_min / self.lr_max

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_init_ratio + (1.0 - self.warmup_init_ratio) * step / self.warmup_steps
        if step == self.warmup_steps:
            return 1.0
        if step >= self.total_steps:
            return self.min_ratio
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        r = self.min_ratio
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr(self, step: int) -> float:
        """Absolute learning rate at ``step`` (end points are exactly lr_max / lr_min)."""
        if step == self.warmup_steps:
            return self.lr_max
        if step >= self.total_steps:
            return self.lr_min
        return self.lr_max * self(step)


def warmup_cosine_scheduler(
    optimizer: Optimizer,
    warmup_steps: int,
    total_steps: int,
    lr_max: float = 1e-4,
    lr_min: float = 1e-5,
    warmup_init_ratio: float = 0.0,
) -> LambdaLR:
    """LambdaLR following :class:`WarmupCosine`; call ``scheduler.step()`` once per optimizer step.

    The optimizer's param groups are set to ``lr_max`` times their ``lr_scale`` (default 1) first,
    because LambdaLR multiplies each group's initial lr by the factor.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr_max * group.get("lr_scale", 1.0)
        group.pop("initial_lr", None)
    schedule = WarmupCosine(warmup_steps, total_steps, lr_max, lr_min, warmup_init_ratio)
    return LambdaLR(optimizer, schedule)
