"""Speech-token embedding and grouping (the released ``audio_tower``).

Grouping turns k consecutive 25 Hz speech frames into one 5 Hz LLM position (paper Sec. 2.2).  The
released weights use the mean of the k token embeddings followed by Linear(H, H); the paper's Eq. 1
concatenates them and applies Linear(kH, H).  Both are here (``grouping_mode``).  Continuous encoder
features of user speech are grouped the same way (always by mean, as released) and either replace or
are added to the token part.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from funaudiochat.config import FunAudioChatAudioEncoderConfig


def pad_to_multiple(x: torch.Tensor, k: int, value: float | int, dim: int = 1) -> torch.Tensor:
    """Right-pad ``dim`` of ``x`` to a multiple of ``k`` so that it splits into whole groups."""
    rest = (-x.shape[dim]) % k
    if rest == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, rest]
    return F.pad(x, pad, value=value)


def group_frames(x: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """[B, T, H] -> [B, ceil(T/k), H] (mean) or [B, ceil(T/k), k*H] (concat); the tail is zero-padded."""
    x = pad_to_multiple(x, k, 0.0)
    b, t, h = x.shape
    groups = x.view(b, t // k, k, h)
    if mode == "mean":
        return groups.mean(dim=2)
    if mode == "concat":
        return groups.reshape(b, t // k, k * h)
    raise ValueError(f"unknown grouping mode {mode!r}")


def ungroup_frames(x: torch.Tensor, k: int) -> torch.Tensor:
    """[B, L, k*H] -> [B, k*L, H]: sub-frame j of position p lands at index k*p + j (paper Eq. 3)."""
    b, length, kh = x.shape
    if kh % k:
        raise ValueError(f"last dimension {kh} is not divisible by the group size {k}")
    return x.reshape(b, length * k, kh // k)


class SpeechTokenGrouping(nn.Module):
    """25 Hz speech tokens (+ optional 25 Hz encoder features) -> 5 Hz LLM input vectors."""

    def __init__(self, config: FunAudioChatAudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        h, k = config.output_dim, config.group_size
        self.embed_tokens = nn.Embedding(config.codebook_size, h, padding_idx=config.pad_token_id)
        in_dim = h if config.grouping_mode == "mean" else k * h
        self.output_matching = nn.Linear(in_dim, h, bias=False)
        self.continual_output_matching = nn.Linear(h, h, bias=False)

    def group_tokens(self, speech_ids: torch.Tensor) -> torch.Tensor:
        """[N, T] speech ids -> [N, ceil(T/k), H]; the padding tail uses the speech pad id."""
        k = self.config.group_size
        ids = pad_to_multiple(speech_ids, k, self.config.pad_token_id)
        return self.output_matching(group_frames(self.embed_tokens(ids), k, self.config.grouping_mode))

    def group_continuous(self, continuous_features: torch.Tensor) -> torch.Tensor:
        """25 Hz encoder features [N, T, H] -> 5 Hz vectors [N, ceil(T/k), H] (mean, then Linear)."""
        return self.continual_output_matching(group_frames(continuous_features, self.config.group_size, "mean"))

    def forward(
        self,
        speech_ids: torch.Tensor,
        continuous_features: torch.Tensor | None = None,
        feature_exist_mask: torch.Tensor | None = None,
        continuous_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Grouped vectors [N, ceil(T/k), H] for N audio items.

        ``continuous_features`` is [N, T, H] at 25 Hz (zero where an item has no waveform); rows with
        ``feature_exist_mask`` set take them in the configured fusion mode, after ``continuous_map``
        (the model's ``vocab_ctc`` adapter, when it has one).
        """
        grouped = self.group_tokens(speech_ids)
        if continuous_features is None:
            return grouped
        if continuous_features.shape[1] != speech_ids.shape[1]:
            raise ValueError(
                f"continuous features have {continuous_features.shape[1]} frames but speech ids have "
                f"{speech_ids.shape[1]}; they must be aligned at 25 Hz"
            )
        cont = self.group_continuous(continuous_features)
        if feature_exist_mask is None:
            feature_exist_mask = torch.ones(grouped.shape[0], dtype=torch.bool, device=grouped.device)
        if continuous_map is not None:
            # Only rows with a waveform are used below; mapping the others (spoken replies, often the
            # longest items) through a 49k-way adapter would be wasted work on every training step.
            rows = torch.nonzero(feature_exist_mask.to(torch.bool)).flatten()
            cont = cont.index_put((rows,), continuous_map(cont[rows]))
        use = feature_exist_mask.to(torch.bool)[:, None, None]
        if self.config.continuous_features_mode == "replace":
            return torch.where(use, cont, grouped)
        return grouped + cont * use.to(cont.dtype)
