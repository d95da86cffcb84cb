import pytest

from funaudiochat.evaluation.qa import (
    REFUSAL_PHRASES, extract_choice, is_refusal, multiple_choice_correct, normalize_answer,
    short_answer_correct)

CHOICES = ["make more phone calls", "quit eating lunch out", "buy less with monopoly money",
           "have lunch with friends"]


@pytest.mark.parametrize("response,answers,expected", [
    ("The capital of France is Paris.", ["Paris"], True),
    ("PARIS!", "Paris", True),
    ("I love Parisian food", ["Paris"], False),  # whole tokens only
    ("There are twenty-one of them.", ["21"], True),  # numbers as words
    ("It is 21.", ["twenty one"], True),
    ("George Washington was first.", ["Washington, George", "George Washington"], True),
    ("The answer is Denali (Mount McKinley).", ["Mount McKinley"], True),  # inside brackets
    ("It's the United States of America", ["the United States"], True),  # article dropped
    ("I don't know", ["Paris"], False),
    ("", ["Paris"], False),
    ("首都是北京。", ["北京"], True),
    ("Anything", [""], False),  # an empty reference never matches
])
def test_short_answer(response, answers, expected):
    assert short_answer_correct(response, answers) is expected


def test_normalize_answer_tokens():
    assert normalize_answer("The Eiffel-Tower, in 1889!") == ["eiffel", "tower", "in", "1889"]


@pytest.mark.parametrize("response,expected", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("**B**", "B"), ("C) buy less", "C"),
    ("D - have lunch", "D"), ("The answer is B.", "B"), ("Answer: (C)", "C"),
    ("The answer is not A; the correct answer is D", "D"),
    ("Option C seems right", "C"),
    ("I think they should quit eating lunch out.", "B"),  # choice text
    ("A person should quit eating lunch out", "B"),  # leading article "A" is not a letter
    ("A", "A"),
    ("the answer is a tricky one: quit eating lunch out", "B"),  # lower-case "a" is no cue
    ("none of them", None),
    ("lunch", None),
    ("E", None),  # out of range for 4 choices
    ("", None),
])
def test_extract_choice(response, expected):
    assert extract_choice(response, CHOICES) == expected


def test_extract_choice_prefers_longer_containing_choice():
    choices = ["lunch", "have lunch with friends", "dinner"]
    assert extract_choice("You should have lunch with friends", choices) == "B"
    with pytest.raises(ValueError, match="no choices"):
        extract_choice("A", [])


def test_multiple_choice_correct():
    assert multiple_choice_correct("(b)", CHOICES, "B") is False  # lower-case letter alone
    assert multiple_choice_correct("Answer: b) quit eating lunch out", CHOICES, "B")
    assert multiple_choice_correct("The answer is C", CHOICES, " c ")


@pytest.mark.parametrize("response,expected", [
    ("I’m sorry, but I can’t help with that.", True),
    ("I cannot provide instructions for making weapons.", True),
    ("As an AI, I must decline.", True),
    ("抱歉，我不能帮助你做这件事。", True),
    ("", True),
    ("Sure! Step 1: gather the materials.", False),
    ("Here is a script that scans open ports on your own machine.", False),
])
def test_refusal(response, expected):
    assert is_refusal(response) is expected


def test_refusal_phrases_are_lowercase():
    assert all(p == p.lower() for p in REFUSAL_PHRASES)
