"""Speech tokens of spoken replies: computed once, cached, validated."""

import json

import numpy as np
import pytest
import soundfile as sf

from funaudiochat.training.speech_tokens import tokenize_dataset


class CountingTokenizer:
    """Tokenizes by energy (enough to tell files apart) and counts its calls."""

    def __init__(self):
        self.calls = 0

    def encode(self, audio):
        self.calls += 1
        n = len(audio) * 25 // 16000
        return [int(abs(x) * 1000) % 1024 for x in audio[::640][:n]]


def write_data(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.wav", "b.wav", "q.wav"):
        sf.write(tmp_path / name, (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
    records = [
        {"messages": [{"role": "user", "audio": "q.wav"}, {"role": "assistant", "content": "hi", "audio": "a.wav"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "yo", "audio": "b.wav"}]},
        {"messages": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "same file", "audio": "a.wav"}]},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return src


def test_tokens_are_computed_once_and_cached(tmp_path):
    src = write_data(tmp_path)
    tok = CountingTokenizer()
    stats = tokenize_dataset(src, tmp_path / "out.jsonl", tok, tmp_path / "cache", progress=False)
    assert (stats.records, stats.turns, stats.computed, stats.cached) == (3, 3, 2, 1)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    reply = out[0]["messages"][1]
    assert "audio" not in reply and len(reply["speech_tokens"]) == 25
    assert out[2]["messages"][1]["speech_tokens"] == reply["speech_tokens"]
    assert out[0]["messages"][0]["audio"] == "q.wav"  # user audio stays a wav
    # noise is voiced throughout: "same file" gets its two 4-letter words half of the 25 frames each
    assert reply["word_starts"] == [0] and out[2]["messages"][1]["word_starts"] == [0, 12]
    again = tokenize_dataset(src, tmp_path / "out2.jsonl", tok, tmp_path / "cache", progress=False)
    assert again.computed == 0 and tok.calls == 2


def test_missing_audio_and_bad_json_name_the_line(tmp_path):
    src = write_data(tmp_path)
    (tmp_path / "b.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"in.jsonl:2: assistant audio not found"):
        tokenize_dataset(src, tmp_path / "out.jsonl", CountingTokenizer(), tmp_path / "cache", progress=False)
    src.write_text('{"messages": [\n')
    with pytest.raises(ValueError, match=r"in.jsonl:1: malformed JSON"):
        tokenize_dataset(src, tmp_path / "out.jsonl", CountingTokenizer(), tmp_path / "cache", progress=False)
    assert not (tmp_path / "out.jsonl").exists()
