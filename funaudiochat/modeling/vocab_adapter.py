"""The ``vocab_ctc`` speech adapter: user speech read as the backbone's own tokens.

Each 5 Hz user-speech vector is scored against the backbone's input-embedding table (plus a blank),
as a CTC output layer over the backbone's vocabulary, and the backbone is given the posterior-weighted
mix of its own token embeddings (the blank contributes a learned vector).  Why: the released linear
adapter has to discover the backbone's input space through the backbone, from speech-text pairs
alone, which takes far more pairs than a small CPU build has (docs/default-model.md).  Here the
encoder learns with a per-frame CTC target and no backbone pass (``training/ctc.py``), and the
backbone then reads near-copies of tokens it already knows.  The idea follows LegoSLM (CTC posteriors
over an LLM's vocabulary as its input).  The released checkpoint uses ``linear`` and has none of
these parameters.
"""

from __future__ import annotations

import torch
from torch import nn


class VocabCTCAdapter(nn.Module):
    """Three small tensors: the blank's query and embedding, and the logits' scale."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        #: Scores the blank: its logit is ``x . blank_query`` beside ``x . E[v]`` for token v.
        self.blank_query = nn.Parameter(torch.zeros(hidden))
        #: What the backbone reads for the blank's share of a position.
        self.blank_embed = nn.Parameter(torch.zeros(hidden))
        self.logit_scale = nn.Parameter(torch.ones(()))

    def logits(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """[..., H] vectors -> [..., V + 1] CTC logits; the blank is the last class."""
        scores = torch.cat([x @ table.T.to(x.dtype), (x @ self.blank_query.to(x.dtype))[..., None]], dim=-1)
        return scores * self.logit_scale.to(x.dtype)

    def mix(self, posterior: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """[..., V + 1] weights -> [..., H] fp32 embedding mix (the blank's share reads ``blank_embed``)."""
        return posterior[..., :-1] @ table.float() + posterior[..., -1:] * self.blank_embed.float()

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """[..., H] vectors -> [..., H] posterior-weighted embeddings."""
        return self.mix(self.logits(x, table).float().softmax(dim=-1), table).to(x.dtype)
