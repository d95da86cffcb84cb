import pytest

from funaudiochat.default_model.questions import Question
from funaudiochat.default_model.speech_data import QUESTION_SPEEDS, build_speech_data, question_voice
from funaudiochat.speech.tts import BUILTIN_VOICES


def test_question_voice_is_deterministic_and_varied():
    picks = [question_voice(f"q{i}") for i in range(200)]
    assert picks == [question_voice(f"q{i}") for i in range(200)]
    assert {e for e, _, _ in picks} == {"piper", "espeak"}
    assert {s for _, _, s in picks} == set(QUESTION_SPEEDS)
    assert all(v in BUILTIN_VOICES[e] for e, v, _ in picks)
    assert len({v for e, v, _ in picks if e == "espeak"}) > 10


def test_build_speech_data_checks_inputs(tmp_path):
    qs = [Question("a", "What is one?", "builtin"), Question("b", "What is two?", "builtin")]
    with pytest.raises(ValueError, match="at least 2 questions"):
        build_speech_data(qs[:1], {"a": "One."}, tmp_path)
    with pytest.raises(ValueError, match=r"no answer for questions \['b'\]"):
        build_speech_data(qs, {"a": "One."}, tmp_path)
