import json

import pytest

from funaudiochat.evaluation.datasets import load_jsonl_set
from funaudiochat.evaluation.ifeval import (
    CHECKERS, IFEvalResult, check_instruction, count_sentences, count_words, evaluate_response,
    ifeval_accuracy, loose_variants)
from funaudiochat.evaluation.language_id import detect_language

C = check_instruction


def test_counting_helpers():
    assert count_words("Hello, world! It's 3.5 o'clock") == 8  # \w+ splits at apostrophes and dots
    assert count_sentences("Dr. Smith arrived. He said hi! Was it 3.5 p.m.? Yes.") == 4
    assert count_sentences("J. R. R. Tolkien wrote books. They sold well.") == 2
    assert count_sentences("") == 0


@pytest.mark.parametrize("iid,kwargs,good,bad", [
    ("punctuation:no_comma", {}, "No commas here.", "One, two"),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THE BIG dog", "The BIG dog"),
    ("change_case:capital_word_frequency",
     {"capital_frequency": 2, "capital_relation": "less than"},
     "The BIG dog", "THE BIG dog"),
    ("change_case:english_capital", {}, "THIS IS ALL IN CAPITAL LETTERS AND IT IS FINE.",
     "This is not all capitals."),
    ("change_case:english_lowercase", {}, "this is all lower case and it is fine.",
     "This is not."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."},
     "write a poem. Roses are red.", "Roses are red. Write a poem."),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.",
     "Same.\n******\nSame."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], at [address].", "Dear [name]."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Hi.\n\nP.S. see you", "Hi. PS see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     "Hi.\nP.P.S. bye", "Hi.\nP.S. bye"),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "Maybe."),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nfoo\nSECTION 2\nbar", "SECTION 1\nfoo"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two",
     "* one\n* two\n* three"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "*one* and **two**", "*one* and ** **"),
    ("detectable_format:title", {}, "<<My Title>>\ntext", "<< >> text"),
    ("keywords:existence", {"keywords": ["dog", "day"]}, "A DOG had a good day", "A dog"),
    ("keywords:forbidden_words", {"forbidden_words": ["can"]}, "Cannot is fine", "I can go"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"},
     "cat Cat", "cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"},
     "cat", "cat Cat"),
    ("keywords:letter_frequency", {"letter": "q", "let_frequency": 2, "let_relation": "at least"},
     "Quick quiz", "Quick"),
    ("language:response_language", {"language": "de"},
     "Das ist ein schöner Tag und wir sind sehr glücklich.", "This is a lovely day."),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "send"},
     "Hello there.\n\n\"Send, it now.", "Hello there.\n\nPlease send it."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One.\n***\nTwo.",
     "One.\n***\n\n***\nTwo."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "Only one.", "One. Two."),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"},
     "one two three", "one two"),
    ("startend:end_checker", {"end_phrase": "Peace!"}, "Bye now. peace!\"", "Peace! Bye."),
    ("startend:quotation", {}, '"quoted"', '"unbalanced'),
])
def test_checker_good_and_bad(iid, kwargs, good, bad):
    assert C(iid, good, kwargs) is True
    assert C(iid, bad, kwargs) is False


def test_checker_errors_and_none_kwargs():
    with pytest.raises(ValueError, match="unsupported IFEval instruction"):
        C("foo:bar", "x")
    with pytest.raises(ValueError, match="bad kwargs"):
        C("punctuation:no_comma", "x", {"bogus": 1})
    with pytest.raises(ValueError, match="unknown relation"):
        C("length_constraints:number_words", "a b", {"num_words": 1, "relation": "about"})
    assert C("punctuation:no_comma", "x", {"num_words": None}) is True  # None kwargs dropped


def test_loose_variants_and_accuracy():
    assert len(loose_variants("a\nb\nc")) == 8
    record = {"id": 1, "instruction_id_list": ["startend:quotation", "punctuation:no_comma"],
              "kwargs": [{}, {}]}
    # Strict fails because of the intro line; loose drops the first line and passes.
    res = evaluate_response(record, 'Sure here it is\n"All quoted"')
    assert res.strict == (False, True) and res.loose == (True, True)
    empty = evaluate_response(record, "   ")
    assert empty.strict == (False, False) and empty.loose == (False, False)
    acc = ifeval_accuracy([res, IFEvalResult((True, True), (True, True))])
    assert acc == {"prompt_strict": 0.5, "prompt_loose": 1.0, "instruction_strict": 0.75,
                   "instruction_loose": 1.0}
    with pytest.raises(ValueError, match="no results"):
        ifeval_accuracy([])
    with pytest.raises(ValueError, match="2 instructions but 1 kwargs"):
        evaluate_response({"id": 9, "instruction_id_list": ["a", "b"], "kwargs": [{}]}, "x")


@pytest.mark.parametrize("lang,text", [
    ("en", "The quick brown fox jumps over the lazy dog and it was a good day for all of us."),
    ("de", "Der schnelle braune Fuchs springt über den faulen Hund und es war ein schöner Tag."),
    ("fi", "Nopea ruskea kettu hyppää laiskan koiran yli, ja se oli hyvä päivä meille kaikille."),
    ("pt", "A rápida raposa marrom pula sobre o cão preguiçoso e foi um dia muito bom."),
    ("sw", "Mbweha mwepesi anaruka juu ya mbwa mvivu na ilikuwa siku nzuri kwa sisi sote."),
    ("vi", "Con cáo nâu nhanh nhẹn nhảy qua con chó lười và đó là một ngày tốt đẹp."),
    ("bg", "Бързата кафява лисица прескача мързеливото куче и това беше хубав ден за нас."),
    ("ru", "Быстрая коричневая лиса прыгает через ленивую собаку, и это был хороший день."),
    ("hi", "तेज भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है और यह एक अच्छा दिन था।"),
    ("mr", "चपळ तपकिरी कोल्हा आळशी कुत्र्यावर उडी मारतो आणि हा चांगला दिवस होता आहे."),
    ("fa", "روباه قهوه ای سریع از روی سگ تنبل می پرد و این یک روز خوب برای همه ما بود."),
    ("ur", "تیز بھوری لومڑی سست کتے کے اوپر چھلانگ لگاتی ہے اور یہ ایک اچھا دن تھا۔"),
    ("bn", "দ্রুত বাদামী শিয়াল অলস কুকুরের উপর দিয়ে লাফ দেয়।"),
    ("kn", "ವೇಗದ ಕಂದು ನರಿ ಸೋಮಾರಿ ನಾಯಿಯ ಮೇಲೆ ಹಾರುತ್ತದೆ."),
    ("ko", "빠른 갈색 여우가 게으른 개를 뛰어넘습니다."),
    ("pa", "ਤੇਜ਼ ਭੂਰੀ ਲੂੰਬੜੀ ਆਲਸੀ ਕੁੱਤੇ ਉੱਤੇ ਛਾਲ ਮਾਰਦੀ ਹੈ।"),
    ("ta", "விரைவான பழுப்பு நரி சோம்பேறி நாயின் மீது குதிக்கிறது."),
    ("th", "สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจ"),
    ("zh", "敏捷的棕色狐狸跳过了懒狗。"),
])
def test_language_id(lang, text):
    assert detect_language(text) == lang


def test_language_id_undecidable():
    assert detect_language("12345 !!") is None
    assert detect_language("") is None


def test_every_dev_instruction_has_a_checker(benchdata):
    records = load_jsonl_set(benchdata / "ifeval" / "dev.jsonl")
    ids = {i for r in records for i in r["instruction_id_list"]}
    assert len(ids) == 25
    assert ids <= set(CHECKERS)
    # Each record can be evaluated without error; echoing the prompt follows few instructions.
    results = [evaluate_response(r, r["question"]) for r in records]
    acc = ifeval_accuracy(results)
    assert 0.0 < acc["instruction_strict"] <= acc["instruction_loose"] < 0.6
    assert json.dumps(acc)  # plain floats
