"""Word / character error rate from our own Levenshtein alignment.

Corpus-level WER is the sum of edits over the sum of reference lengths (not the mean of
per-utterance rates), which is how LibriSpeech numbers are conventionally reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from funaudiochat.evaluation.normalize import normalize_text, tokenize_mixed

logger = logging.getLogger(__name__)

__all__ = ["EditCounts", "edit_counts", "wer", "cer", "corpus_wer", "corpus_cer", "mer"]


@dataclass(frozen=True)
class EditCounts:
    """Alignment result: substitutions, deletions, insertions, hits and reference length."""

    substitutions: int
    deletions: int
    insertions: int
    hits: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def ref_len(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def rate(self) -> float:
        """Error rate; an empty reference gives 0.0 if the hypothesis is empty, else inf."""
        if self.ref_len == 0:
            return 0.0 if self.insertions == 0 else float("inf")
        return self.errors / self.ref_len

    def __add__(self, other: "EditCounts") -> "EditCounts":
        return EditCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.hits + other.hits,
        )


def edit_counts(reference: Sequence[str], hypothesis: Sequence[str]) -> EditCounts:
    """Minimum-edit alignment of two token sequences with S/D/I/H counts.

    Ties between alignments of equal cost are broken towards substitutions, then deletions,
    which yields the same totals as the usual jiwer / sclite conventions.
    """
    n, m = len(reference), len(hypothesis)
    # cost[i][j] = (edits, subs, dels, ins) to align ref[:i] with hyp[:j]; row-by-row DP.
    prev = [(j, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [(i, 0, i, 0)] + [(0, 0, 0, 0)] * m
        r = reference[i - 1]
        for j in range(1, m + 1):
            diag = prev[j - 1]
            if r == hypothesis[j - 1]:
                best = diag
            else:
                best = (diag[0] + 1, diag[1] + 1, diag[2], diag[3])
            up = prev[j]  # deletion of ref token
            cand = (up[0] + 1, up[1], up[2] + 1, up[3])
            if cand[0] < best[0]:
                best = cand
            left = cur[j - 1]  # insertion of hyp token
            cand = (left[0] + 1, left[1], left[2], left[3] + 1)
            if cand[0] < best[0]:
                best = cand
            cur[j] = best
        prev = cur
    total, subs, dels, ins = prev[m]
    hits = n - subs - dels
    return EditCounts(subs, dels, ins, hits)


def _words(text: str, language: str, normalize: bool) -> list[str]:
    if normalize:
        text = normalize_text(text, language)
    return text.split()


def wer(reference: str, hypothesis: str, language: str = "en", normalize: bool = True) -> float:
    """Word error rate of one utterance (optionally after normalisation)."""
    return edit_counts(_words(reference, language, normalize),
                       _words(hypothesis, language, normalize)).rate


def _chars(text: str, language: str, normalize: bool) -> list[str]:
    if normalize:
        text = normalize_text(text, language)
    return [c for c in text if not c.isspace()]


def cer(reference: str, hypothesis: str, language: str = "zh", normalize: bool = True) -> float:
    """Character error rate (whitespace ignored), the usual metric for Chinese ASR."""
    return edit_counts(_chars(reference, language, normalize),
                       _chars(hypothesis, language, normalize)).rate


def mer(reference: str, hypothesis: str, normalize: bool = True) -> float:
    """Mixed error rate for code-switched text: CJK characters and English words as tokens."""
    def toks(t: str) -> list[str]:
        return normalize_text(t, "zh").split() if normalize else tokenize_mixed(t)

    return edit_counts(toks(reference), toks(hypothesis)).rate


def _corpus(pairs: Iterable[tuple[str, str]], tokenize) -> EditCounts:
    total = EditCounts(0, 0, 0, 0)
    for ref, hyp in pairs:
        total = total + edit_counts(tokenize(ref), tokenize(hyp))
    return total


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str], language: str = "en",
               normalize: bool = True) -> EditCounts:
    """Summed edit counts over a corpus; `.rate` is the corpus WER."""
    if len(references) != len(hypotheses):
        raise ValueError(
            f"corpus_wer: {len(references)} references but {len(hypotheses)} hypotheses")
    return _corpus(zip(references, hypotheses), lambda t: _words(t, language, normalize))


def corpus_cer(references: Sequence[str], hypotheses: Sequence[str], language: str = "zh",
               normalize: bool = True) -> EditCounts:
    """Summed character edit counts over a corpus; `.rate` is the corpus CER."""
    if len(references) != len(hypotheses):
        raise ValueError(
            f"corpus_cer: {len(references)} references but {len(hypotheses)} hypotheses")
    return _corpus(zip(references, hypotheses), lambda t: _chars(t, language, normalize))
