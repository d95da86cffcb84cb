"""Word error rate with a light text normaliser.

Used to judge whether a synthetic utterance is intelligible (ASR-WER filter).
The normaliser is deliberately small: lower-case, unify quotes/dashes, drop
punctuation, spell integers as words (so "2" and "two" match) and expand a few
symbols. The evaluation package has its own richer normaliser; this module must
stay independent of it so data synthesis has no evaluation dependency.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_text", "number_to_words", "edit_distance", "word_errors", "wer"]

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_SYMBOLS = {"%": " percent ", "&": " and ", "+": " plus ", "@": " at ", "=": " equals "}
# Apostrophes inside words are kept ("don't"); every other non-alphanumeric goes.
_DROP = re.compile(r"[^\w\s']|_")
_NUMBER = re.compile(r"\d+")
_DECIMAL = re.compile(r"(\d+)\.(\d+)")


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(_ONES[n])
    elif n or not words:
        words.append(_ONES[n])
    return words


def number_to_words(n: int) -> str:
    """Spell a non-negative integer as English cardinal words ("42" -> "forty two").

    Numbers of 1000-9999 that look like years (1100-1999, e.g. "1968") are read as two
    pairs ("nineteen sixty eight"), which is how TTS engines and people say them.
    """
    if n < 0:
        raise ValueError(f"number_to_words expects n >= 0, got {n}")
    if 1100 <= n <= 1999 and n % 100 != 0:
        return " ".join(_below_thousand(n // 100) + (["oh"] if n % 100 < 10 else []) + _below_thousand(n % 100))
    if n >= 10**15:  # too long to be a spoken number; read digit by digit
        return " ".join(_ONES[int(d)] for d in str(n))
    words: list[str] = []
    for value, name in _SCALES:
        if n >= value:
            words += _below_thousand(n // value) + [name]
            n %= value
    if n or not words:
        words += _below_thousand(n)
    return " ".join(words)


def normalize_text(text: str) -> str:
    """Lower-case, strip punctuation and spell numbers so ASR output and source text compare fairly."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    for symbol, spoken in _SYMBOLS.items():
        text = text.replace(symbol, spoken)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"[-\u2010-\u2015/]", " ", text)  # hyphens and slashes separate words
    text = _DECIMAL.sub(
        lambda m: f" {number_to_words(int(m.group(1)))} point {' '.join(_ONES[int(d)] for d in m.group(2))} ", text
    )
    text = _NUMBER.sub(lambda m: f" {number_to_words(int(m.group()))} ", text)
    text = _DROP.sub(" ", text)
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two token lists (the evaluation package's alignment)."""
    from funaudiochat.evaluation.wer import edit_counts

    return edit_counts(ref, hyp).errors


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """Return (word edits, reference word count) after normalisation, for corpus-level WER sums."""
    ref = normalize_text(reference).split()
    hyp = normalize_text(hypothesis).split()
    return edit_distance(ref, hyp), len(ref)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one hypothesis; an empty reference gives 0.0 if the hypothesis is empty too, else 1.0."""
    errors, n = word_errors(reference, hypothesis)
    if n == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / n


def corpus_wer(counts: list[tuple[int, int]]) -> float:
    """Corpus WER: all utterances' errors over all their reference words. ``counts`` holds ``word_errors`` results."""
    words = sum(n for _, n in counts)
    if words == 0:
        raise ValueError("no reference words to score")
    return sum(e for e, _ in counts) / words


def capped_corpus_wer(counts: list[tuple[int, int]]) -> float:
    """Corpus WER with each utterance's errors capped at its reference length.

    Whisper sometimes loops ("in the United States and in the United States ...") on one utterance and
    adds hundreds of insertions, which can move a 40-utterance corpus WER by 30 points on its own; capped,
    such an utterance counts as wholly wrong and no more."""
    return corpus_wer([(min(e, n), n) for e, n in counts])
