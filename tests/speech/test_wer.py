from __future__ import annotations

import pytest

from funaudiochat.speech.wer import (
    capped_corpus_wer,
    corpus_wer,
    edit_distance,
    normalize_text,
    number_to_words,
    wer,
    word_errors,
)


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (19, "nineteen"),
        (40, "forty"),
        (41, "forty one"),
        (100, "one hundred"),
        (512, "five hundred twelve"),
        (1000, "one thousand"),
        (1968, "nineteen sixty eight"),
        (1905, "nineteen oh five"),
        (1900, "one thousand nine hundred"),
        (2008, "two thousand eight"),
        (1_000_001, "one million one"),
    ],
)
def test_number_to_words(n: int, words: str) -> None:
    assert number_to_words(n) == words


def test_number_to_words_rejects_negative() -> None:
    with pytest.raises(ValueError, match="n >= 0"):
        number_to_words(-1)


def test_normalize_text() -> None:
    assert normalize_text("What is 2 plus 2?") == "what is two plus two"
    assert normalize_text("Who painted \u201cMona Lisa\u201d?") == "who painted mona lisa"
    assert normalize_text("It\u2019s 3.5% of 1,000 km \u2014 well-known") == (
        "it's three point five percent of one thousand km well known"
    )
    assert normalize_text("  ...  ") == ""


def test_edit_distance_counts_each_operation_once() -> None:
    assert edit_distance(list("abc"), list("abc")) == 0
    assert edit_distance(list("abc"), list("axc")) == 1  # substitution
    assert edit_distance(list("abc"), list("ac")) == 1  # deletion
    assert edit_distance(list("abc"), list("abxc")) == 1  # insertion
    assert edit_distance([], list("ab")) == 2


def test_wer_values() -> None:
    assert wer("What is the capital of France?", "what is the capital of france") == 0.0
    assert wer("one two three four", "one too three") == pytest.approx(0.5)
    assert wer("The year 1968.", "the year nineteen sixty-eight") == 0.0
    assert word_errors("a b c", "a b c d e") == (2, 3)
    assert wer("", "") == 0.0
    assert wer("", "something") == 1.0


def test_capped_corpus_wer_limits_a_looping_utterance() -> None:
    loop = word_errors("the capital is paris", "the capital is paris " + "and in the united states " * 20)
    good = word_errors("it is four", "it is for")
    assert loop == (100, 4) and good == (1, 3)
    assert corpus_wer([loop, good]) == pytest.approx(101 / 7)
    assert capped_corpus_wer([loop, good]) == pytest.approx((4 + 1) / 7)
    assert capped_corpus_wer([good, (0, 5)]) == corpus_wer([good, (0, 5)]) == pytest.approx(1 / 8)  # no loop
    for score in (corpus_wer, capped_corpus_wer):
        with pytest.raises(ValueError, match="no reference words"):
            score([(3, 0)])
