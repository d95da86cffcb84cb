"""Read-aloud turns: which sentences are chosen, and the SFT records they become."""

import json

import numpy as np
import pytest

from funaudiochat.default_model.read_aloud import (
    READ_ALOUD_PROMPT,
    READ_ALOUD_TASK,
    build_read_aloud,
    choose_sentences,
)
from funaudiochat.training.data import validate_jsonl

from .conftest import write_benchdata

FRAME = 640  # samples per 25 Hz speech token at 16 kHz


def _bench(tmp_path):
    rows = {
        "librispeech_test_clean": [{"id": "ls1", "reference": "THE ORCHARD WAS FULL OF RIPE APPLES"},
                                   {"id": "ls2", "reference": "SHE SANG A SONG ABOUT THE SEA"}],
        "mmlu_pro_mmsu_domains": [{"id": "m1", "question": "Photosynthesis needs light and water. "
                                                           "A fox ran into the deep dark orchard."}],
    }
    return write_benchdata(tmp_path, rows)


class FakeTokenizer:
    """One token per 40 ms, counting calls (the real one needs the Whisper weights)."""

    def __init__(self):
        self.calls = 0

    def encode(self, audio):
        self.calls += 1
        return [i % 1024 for i in range(len(audio) // FRAME)]


@pytest.fixture
def fake_tts(monkeypatch):
    spoken = []

    class FakeEngine:
        def synthesize(self, text, voice=None, speed=1.0):
            spoken.append((text, voice, speed))
            # 0.2 s of silence, then a tone 0.3 s per word: voiced frames for the word starts
            t = np.arange(int(0.3 * 16000 * len(text.split()))) / 16000
            return np.concatenate([np.zeros(3200), 0.3 * np.sin(2 * np.pi * 220 * t)]).astype(np.float32), 16000

    monkeypatch.setattr("funaudiochat.default_model.speech_data.TTSEngines.get", lambda self, name: FakeEngine())
    return spoken


def test_the_choice_skips_the_given_texts_and_is_fixed_by_the_ids(tmp_path):
    bench = _bench(tmp_path)
    every = choose_sentences(bench, [], 10)
    assert len(every) == 4 and choose_sentences(bench, [], 10) == every
    assert choose_sentences(bench, [], 2) == every[:2]
    # exclusion ignores case and surrounding space (the CTC set writes LibriSpeech text in sentence case)
    rest = choose_sentences(bench, ["  the ORCHARD was full of ripe apples"], 10)
    assert [s.id for s in rest] == [s.id for s in every if s.id != "ls1#0"]


def test_records_are_valid_sft_data_and_a_rerun_reuses_recordings_and_tokens(tmp_path, fake_tts):
    bench, work, tok = _bench(tmp_path / "bench"), tmp_path / "work", FakeTokenizer()
    path = build_read_aloud(bench, [], work, 3, speech_tokenizer=tok, progress=False)
    assert path == work / "data" / "read_aloud.jsonl"
    records, errors = validate_jsonl(path, mode="sft")
    assert not errors and len(records) == 3 == len(fake_tts) == tok.calls
    assert all(voice == "joe" and speed == 1.0 for _, voice, speed in fake_tts)
    for r, raw in zip(records, map(json.loads, path.read_text().splitlines())):
        system, user, reply = r.messages
        assert r.task == READ_ALOUD_TASK and r.id.startswith("read:")
        assert user.content == READ_ALOUD_PROMPT.format(text=reply.content) and user.audio is None
        wav = work / "data" / raw["meta"]["recording"]
        import soundfile as sf

        assert len(reply.speech_tokens) == len(sf.read(wav)[0]) // FRAME
        # one start per word, the first in the 0.2 s of silence's end (frame 5)
        assert len(reply.word_starts) == len(reply.content.split()) and reply.word_starts[0] == 5
    before = path.read_text()
    path.unlink()  # a run killed before the list was written
    assert build_read_aloud(bench, [], work, 3, speech_tokenizer=tok, progress=False) == path
    assert path.read_text() == before and len(fake_tts) == 3 and tok.calls == 3


def test_no_pool_or_no_count_adds_nothing(tmp_path, fake_tts, caplog):
    assert build_read_aloud(tmp_path / "missing", [], tmp_path / "w", 3, speech_tokenizer=FakeTokenizer()) is None
    assert "no benchmark folder" in caplog.text
    assert build_read_aloud(_bench(tmp_path / "b"), [], tmp_path / "w", 0) is None
    assert not fake_tts and not (tmp_path / "w").exists()
