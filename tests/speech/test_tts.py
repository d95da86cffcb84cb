from __future__ import annotations

import numpy as np
import pytest

from funaudiochat.speech.tts import BUILTIN_VOICES, create_engine

SENTENCE = "The birch canoe slid on the smooth planks."


def _check_audio(audio: np.ndarray, sr: int) -> None:
    assert sr == 16000
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.5 < audio.shape[0] / sr < 10.0
    assert float(np.sqrt(np.mean(audio**2))) > 0.02  # not silent
    assert float(np.max(np.abs(audio))) <= 1.0


def test_piper_is_16k_float32_nonsilent_and_bit_deterministic(piper_engine) -> None:
    a, sr = piper_engine.synthesize(SENTENCE, voice="joe", speed=1.0)
    _check_audio(a, sr)
    b, _ = piper_engine.synthesize(SENTENCE, voice="joe", speed=1.0)
    assert a.tobytes() == b.tobytes()


def test_piper_speed_changes_duration(piper_engine) -> None:
    slow, _ = piper_engine.synthesize(SENTENCE, speed=0.8)
    fast, _ = piper_engine.synthesize(SENTENCE, speed=1.25)
    assert fast.shape[0] < 0.85 * slow.shape[0]


def test_piper_unknown_voice(piper_engine) -> None:
    with pytest.raises(ValueError, match="unknown voice 'amy'"):
        piper_engine.synthesize(SENTENCE, voice="amy")


def test_espeak_is_16k_float32_nonsilent_and_bit_deterministic(espeak_engine) -> None:
    a, sr = espeak_engine.synthesize(SENTENCE, voice="en-gb+f3:p65", speed=1.0)
    _check_audio(a, sr)
    b, _ = espeak_engine.synthesize(SENTENCE, voice="en-gb+f3:p65", speed=1.0)
    assert a.tobytes() == b.tobytes()


def test_espeak_voice_pitch_and_speed_give_different_audio(espeak_engine) -> None:
    base, _ = espeak_engine.synthesize(SENTENCE, voice="en-us:p50")
    other_voice, _ = espeak_engine.synthesize(SENTENCE, voice="en-gb+m3:p50")
    high, _ = espeak_engine.synthesize(SENTENCE, voice="en-us:p80")
    fast, _ = espeak_engine.synthesize(SENTENCE, voice="en-us:p50", speed=1.5)
    assert base.tobytes() != other_voice.tobytes()
    assert base.tobytes() != high.tobytes()
    assert fast.shape[0] < 0.8 * base.shape[0]


def test_espeak_rejects_bad_voices_and_text(espeak_engine) -> None:
    with pytest.raises(ValueError, match="malformed voice 'en us'"):
        espeak_engine.synthesize(SENTENCE, voice="en us")
    with pytest.raises(RuntimeError, match="espeak-ng failed"):
        espeak_engine.synthesize(SENTENCE, voice="xx-nonexistent")
    with pytest.raises(ValueError, match="non-empty string"):
        espeak_engine.synthesize("   ")
    with pytest.raises(ValueError, match="speed"):
        espeak_engine.synthesize(SENTENCE, speed=10.0)


def test_espeak_text_starting_with_dash_is_spoken_not_parsed(espeak_engine) -> None:
    audio, sr = espeak_engine.synthesize("-v is not an option here")
    _check_audio(audio, sr)


def test_builtin_voices_are_read_only_and_valid(espeak_engine) -> None:
    assert BUILTIN_VOICES["piper"] == ("joe",)
    assert len(BUILTIN_VOICES["espeak"]) == len(set(BUILTIN_VOICES["espeak"])) == 144
    for v in BUILTIN_VOICES["espeak"]:
        espeak_engine.validate_voice(v)
    with pytest.raises(TypeError):
        BUILTIN_VOICES["x"] = ()  # type: ignore[index]


def test_create_engine_unknown() -> None:
    with pytest.raises(ValueError, match="unknown TTS engine 'festival'"):
        create_engine("festival")
