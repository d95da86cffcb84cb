import pytest

from funaudiochat.evaluation.normalize import (
    normalize_chinese, normalize_english, normalize_text, tokenize_mixed, words_to_digits)
from funaudiochat.evaluation.wer import (
    EditCounts, cer, corpus_cer, corpus_wer, edit_counts, mer, wer)


@pytest.mark.parametrize("text,expected", [
    ("Twenty-one", "21"),
    ("twenty one thousand two hundred and five", "21205"),
    ("born in nineteen eighty four", "born in 1984"),
    ("nineteen oh five", "1905"),
    ("a hundred people", "100 people"),
    ("the twenty first century", "the 21st century"),
    ("three point five", "3.5"),
    ("two thousand and twenty", "2020"),
    ("seventeen hundred", "1700"),
    ("hundred", "hundred"),  # a bare scale word is not a number
    ("the first one", "the first 1"),
])
def test_words_to_digits_via_normalizer(text, expected):
    assert normalize_english(text) == expected


def test_english_normalizer_rules():
    assert normalize_english("I won't go, it's (laughs) fine!") == "i will not go it is fine"
    assert normalize_english("Mr. Smith paid $5 [noise]") == "mister smith paid 5 dollars"
    assert normalize_english("1,000,000 people") == "1000000 people"
    assert normalize_english("Um, the CAFÉ is ninety-nine %") == "the cafe is 99 percent"
    assert normalize_english("HE’S GONE") == normalize_english("he is gone") == "he is gone"
    assert normalize_english("") == ""
    # Keeping brackets is possible for answer matching.
    assert normalize_english("(Paris)", drop_bracketed=False) == "paris"


def test_words_to_digits_leaves_non_numbers():
    assert words_to_digits("oh my one two") == "oh my 1 2"
    assert words_to_digits("nothing here") == "nothing here"


def test_chinese_normalizer_is_per_character():
    assert normalize_chinese("你好，世界！Hello World。") == "你 好 世 界 hello world"
    assert normalize_chinese("１２３ＡＢＣ") == "123abc"  # full-width folded
    assert tokenize_mixed("我爱NLP and 你") == ["我", "爱", "NLP", "and", "你"]
    assert normalize_text("中文", "auto") == "中 文"
    with pytest.raises(ValueError, match="unsupported language"):
        normalize_text("x", "fr")


def test_edit_counts_exact():
    ec = edit_counts("a b c d".split(), "a x c d e".split())
    assert (ec.substitutions, ec.deletions, ec.insertions, ec.hits) == (1, 0, 1, 3)
    assert ec.errors == 2 and ec.ref_len == 4 and ec.rate == 0.5
    ec = edit_counts("a b c".split(), [])
    assert (ec.deletions, ec.rate) == (3, 1.0)
    assert edit_counts([], []).rate == 0.0
    assert edit_counts([], ["x"]).rate == float("inf")
    assert EditCounts(1, 0, 0, 2) + EditCounts(0, 1, 1, 0) == EditCounts(1, 1, 1, 2)


def test_wer_normalised_and_raw():
    assert wer("HE HOPED THERE WOULD BE STEW", "He hoped there'd be stew.") == 0.0
    assert wer("HE HOPED THERE WOULD BE STEW", "He hoped their be stew.") == pytest.approx(2 / 6)
    assert wer("twenty one apples", "21 apples") == 0.0
    assert wer("twenty one apples", "21 apples", normalize=False) == pytest.approx(2 / 3)


def test_cer_and_mer():
    assert cer("今天天气很好", "今天天汽很好。") == pytest.approx(1 / 6)
    assert mer("我爱 NLP", "我 爱 nlp") == 0.0
    assert mer("我爱 NLP 课程", "我恨 NLP") == pytest.approx(3 / 5)


def test_corpus_rates_are_pooled_not_averaged():
    refs = ["a b c d e f g h i j", "x"]
    hyps = ["a b c d e f g h i j", "y"]
    ec = corpus_wer(refs, hyps)
    assert ec.rate == pytest.approx(1 / 11)  # mean of per-utterance WER would be 0.5
    assert corpus_cer(["甲乙"], ["甲丙"]).rate == 0.5
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        corpus_wer(refs, hyps[:1])


def test_matches_jiwer_if_installed():
    jiwer = pytest.importorskip("jiwer")
    pairs = [("the cat sat on the mat", "the cat sit on mat"),
             ("a b c d e", "e d c b a"), ("hello world", "hello big wide world")]
    for ref, hyp in pairs:
        assert edit_counts(ref.split(), hyp.split()).rate == pytest.approx(jiwer.wer(ref, hyp))
