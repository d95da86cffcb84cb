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

import zlib

import torch
from torch import nn

#: Character n-gram lengths of a token's spelling (``spelling_bags``).
SPELLING_ORDERS = (1, 2, 3)


def spelling_bags(tokens: list[str], buckets: int, orders: tuple[int, ...] = SPELLING_ORDERS) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, offsets) of each token's hashed character n-grams, in ``nn.EmbeddingBag`` form.

    A token is spelled lower-cased with its spaces written ``_``, so " France", " france" and " fr"
    share n-grams; crc32 makes the buckets the same on every machine and Python run.  A token with no
    characters gets one bucket of its own kind (``<empty>``).
    """
    if buckets < 1:
        raise ValueError(f"spelling buckets must be >= 1, got {buckets}")
    index: list[int] = []
    offsets: list[int] = []
    for text in tokens:
        s = text.lower().replace(" ", "_")
        grams = [s[i:i + n] for n in orders for i in range(len(s) - n + 1)] or ["<empty>"]
        offsets.append(len(index))
        index += [zlib.crc32(g.encode("utf-8")) % buckets for g in grams]
    return torch.tensor(index, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


class VocabCTCAdapter(nn.Module):
    """Three small tensors (the blank's query and embedding, the logits' scale), and optionally a
    spelling table.

    With ``spelling_buckets`` > 0 each token is scored against its embedding plus a learned vector
    summed from its spelling's hashed n-grams (zero at the start, so the adapter starts as without
    it).  Why: the readout hears almost only words that the backbone spells with one frequent token; a
    rare piece has too few recordings to learn its score, but its letters occur in many words that
    do (docs/default-model-history.md, session 20: WER 36.1 % -> 29.4 % on real speech in a probe).  The mix
    the backbone reads still uses the plain embeddings.  ``spelling_grams`` and ``vocab_size`` fix the
    shapes of the bag buffers (filled by :meth:`set_spelling`, saved with the weights).
    """

    def __init__(self, hidden: int, spelling_buckets: int = 0, spelling_grams: int = 0, vocab_size: int = 0) -> None:
        super().__init__()
        #: Scores the blank: its logit is ``x . blank_query`` beside ``x . E[v]`` for token v.
        self.blank_query = nn.Parameter(torch.zeros(hidden))
        #: What the backbone reads for the blank's share of a position.
        self.blank_embed = nn.Parameter(torch.zeros(hidden))
        self.logit_scale = nn.Parameter(torch.ones(()))
        self.spelling = None
        if spelling_buckets > 0:
            if spelling_grams < 1 or vocab_size < 1:
                raise ValueError("a spelling table needs spelling_grams >= 1 and vocab_size >= 1 "
                                 f"(got {spelling_grams}, {vocab_size})")
            self.spelling = nn.EmbeddingBag(spelling_buckets, hidden, mode="sum")
            nn.init.zeros_(self.spelling.weight)
            self.register_buffer("spelling_index", torch.zeros(spelling_grams, dtype=torch.long))
            self.register_buffer("spelling_offsets", torch.zeros(vocab_size, dtype=torch.long))

    def set_spelling(self, tokens: list[str]) -> None:
        """Fill the bag buffers from the spelling of each CTC token (row order of the table)."""
        if self.spelling is None:
            raise ValueError("this adapter has no spelling table (spelling_buckets = 0)")
        self.set_bags(*spelling_bags(tokens, self.spelling.num_embeddings))

    def set_bags(self, index: torch.Tensor, offsets: torch.Tensor) -> None:
        """Fill the bag buffers with ready-made ``(index, offsets)`` (``spelling_bags``' form)."""
        if self.spelling is None:
            raise ValueError("this adapter has no spelling table (spelling_buckets = 0)")
        if index.shape != self.spelling_index.shape or offsets.shape != self.spelling_offsets.shape:
            raise ValueError(f"{offsets.numel()} tokens with {index.numel()} n-grams do not fit this adapter's "
                             f"{self.spelling_offsets.numel()} tokens and {self.spelling_index.numel()} n-grams")
        with torch.no_grad():
            self.spelling_index.copy_(index)
            self.spelling_offsets.copy_(offsets)

    def score_table(self, table: torch.Tensor) -> torch.Tensor:
        """The rows the vectors are scored against: the embeddings, plus the spelling vectors."""
        if self.spelling is None:
            return table
        counts = torch.diff(self.spelling_offsets, append=self.spelling_offsets.new_tensor([self.spelling_index.numel()]))
        # 1/sqrt(n-grams): a long token's vector is not louder than a short one's.
        weights = torch.repeat_interleave(counts.clamp(min=1).float().rsqrt(), counts).to(self.spelling.weight.dtype)
        vectors = self.spelling(self.spelling_index, self.spelling_offsets, per_sample_weights=weights)
        return table + vectors.to(table.dtype)

    def logits(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """[..., H] vectors -> [..., V + 1] CTC logits; the blank is the last class."""
        scores = torch.cat([x @ self.score_table(table).T.to(x.dtype), (x @ self.blank_query.to(x.dtype))[..., None]], dim=-1)
        return scores * self.logit_scale.to(x.dtype)

    def mix(self, posterior: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """[..., V + 1] weights -> [..., H] fp32 embedding mix (the blank's share reads ``blank_embed``)."""
        return posterior[..., :-1] @ table.float() + posterior[..., -1:] * self.blank_embed.float()

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """[..., H] vectors -> [..., H] posterior-weighted embeddings."""
        return self.mix(self.logits(x, table).float().softmax(dim=-1), table).to(x.dtype)
