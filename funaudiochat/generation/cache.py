"""Per-conversation KV caches, and packing several of them into one batch.

Each conversation keeps its cache *packed* (no gaps).  For a batched turn the caches are left-padded
to a common length; padded columns are masked out and RoPE uses true positions, so the numbers are
those of each conversation alone.  At the end of the turn every row is packed back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class PackedCache:
    """Keys and values per layer, [1, heads, T, head_dim] each, for one conversation."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[-2] if self.layers else 0

    def crop(self, length: int) -> "PackedCache":
        """Keep the first ``length`` positions (used to truncate an interrupted reply)."""
        return PackedCache([(k[..., :length, :], v[..., :length, :]) for k, v in self.layers])


def merge_caches(caches: list[PackedCache | None]) -> tuple[DynamicCache | None, torch.Tensor]:
    """Left-pad the caches into one batch; returns the cache and its column mask [B, T]."""
    lengths = [c.length if c is not None else 0 for c in caches]
    width = max(lengths)
    mask = torch.zeros(len(caches), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = 1
    if width == 0:
        return None, mask
    template = next(c for c in caches if c is not None and c.length)
    layers = []
    for li, (k0, v0) in enumerate(template.layers):
        ks = k0.new_zeros(len(caches), k0.shape[1], width, k0.shape[3])
        vs = v0.new_zeros(len(caches), v0.shape[1], width, v0.shape[3])
        for i, c in enumerate(caches):
            if lengths[i]:
                ks[i, :, width - lengths[i] :] = c.layers[li][0][0]
                vs[i, :, width - lengths[i] :] = c.layers[li][1][0]
        layers.append((ks, vs))
    return DynamicCache(ddp_cache_data=layers), mask.to(k0.device)


def split_cache(cache: DynamicCache | None, mask: torch.Tensor) -> list[PackedCache | None]:
    """Undo :func:`merge_caches` after a turn: each row keeps only its valid columns."""
    if cache is None:
        return [None] * mask.shape[0]
    layers = [(k, v) for k, v, *_ in cache]
    out: list[PackedCache | None] = []
    for i in range(mask.shape[0]):
        cols = mask[i].to(torch.bool)
        out.append(PackedCache([(k[i : i + 1, :, cols], v[i : i + 1, :, cols]) for k, v in layers]))
    return out
