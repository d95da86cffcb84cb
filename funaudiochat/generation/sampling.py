"""Token sampling: greedy, temperature, top-k, top-p and repetition penalty.

Text and speech each get their own :class:`SamplingConfig`; randomness comes from a per-conversation
``torch.Generator`` so that a seed reproduces a conversation exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """``temperature == 0`` means greedy (arg-max)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


#: The released model's demo settings for speech: sampled, with a repetition penalty.
DEFAULT_SPEECH_SAMPLING = SamplingConfig(temperature=0.8, top_p=0.9, repetition_penalty=1.2)
GREEDY = SamplingConfig()

#: Speech tokens that the repetition penalty looks back on (2 s at 25 Hz): a speech token repeats
#: naturally over longer spans, so the penalty only discourages short loops.
SPEECH_HISTORY = 50


def apply_repetition_penalty(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty: shrink positive and grow negative logits of tokens already produced."""
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    logits = logits.clone()
    seen = torch.unique(previous)
    values = logits[..., seen]
    logits[..., seen] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def sample_token(
    logits: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
    previous: torch.Tensor | None = None,
    banned: torch.Tensor | None = None,
) -> int:
    """Pick one token from a [V] logit vector."""
    logits = logits.float()
    if banned is not None and banned.numel():
        logits = logits.index_fill(-1, banned, float("-inf"))
    if previous is not None:
        logits = apply_repetition_penalty(logits, previous, config.repetition_penalty)
    if config.greedy:
        return int(torch.argmax(logits))
    # shift first so that a tiny temperature sends the others to -inf instead of overflowing to nan
    logits = (logits - logits.max()) / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= config.top_p
        drop[0] = False  # a top_p that rounds to 0 in float32 must still leave the best token
        logits = logits.index_fill(-1, order[drop], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if generator is not None:  # a conversation's generator lives on the CPU; the logits may be on a GPU
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_speech_token(
    logits: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None,
    spoken: Sequence[int],
    banned: torch.Tensor | None = None,
) -> int:
    """Pick the next speech token of a reply from the SRH's [V] logits.

    ``spoken`` is the reply's real speech tokens so far; only the last :data:`SPEECH_HISTORY` of them
    feed the repetition penalty.  Shared by the half- and full-duplex engines so both sample alike.
    """
    history = torch.tensor(list(spoken[-SPEECH_HISTORY:]), dtype=torch.long, device=logits.device)
    return sample_token(logits, config, generator, history, banned)
