"""Everything one conversation needs between turns.  The model holds none of it."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

import torch

from funaudiochat.generation.cache import PackedCache
from funaudiochat.processing import Message


@dataclass
class Conversation:
    """History, KV caches and sampling state of one conversation.

    ``srh_backlog`` holds the SRH inputs (backbone state + text embedding) of the newest positions
    that the Speech Refined Head has not seen yet: text-only turns skip the SRH, and the backlog is
    fed to it at the start of the next spoken reply so that it always sees the whole conversation,
    as in training.  Invariant: ``srh_positions + len(srh_backlog) == positions``.
    """

    system_prompt: str | None = None
    seed: int | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    messages: list[Message] = field(default_factory=list)
    pending: list[Message] = field(default_factory=list)
    cache: PackedCache | None = None
    srh_cache: PackedCache | None = None
    srh_backlog: torch.Tensor | None = None
    positions: int = 0
    srh_positions: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.seed is not None:
            self.generator.manual_seed(self.seed)
        if self.system_prompt:
            self.pending.append(Message("system", self.system_prompt))

    @property
    def backlog_length(self) -> int:
        return 0 if self.srh_backlog is None else int(self.srh_backlog.shape[0])

    def push_backlog(self, rows: torch.Tensor) -> None:
        """Append SRH inputs [n, H] of newly cached positions."""
        self.srh_backlog = rows if self.srh_backlog is None else torch.cat([self.srh_backlog, rows])

    def truncate(self, positions: int, group_size: int) -> None:
        """Forget everything after the first ``positions`` backbone positions (an interrupted reply)."""
        if positions > self.positions:
            raise ValueError(f"cannot truncate {self.positions} positions to {positions}")
        if positions >= self.srh_positions:
            keep = positions - self.srh_positions
            self.srh_backlog = None if keep == 0 else self.srh_backlog[:keep]
        else:
            self.srh_backlog = None
            self.srh_positions = positions
            if self.srh_cache is not None:
                self.srh_cache = self.srh_cache.crop(group_size * positions) if positions else None
        if self.cache is not None:
            self.cache = self.cache.crop(positions) if positions else None
        self.positions = positions
