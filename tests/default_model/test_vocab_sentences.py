"""The extra CTC sentences: which sentences qualify, which are picked, and the data they become."""

import json

import numpy as np
import pytest

from funaudiochat.default_model.vocab_sentences import (
    Sentence,
    build_vocab_speech,
    pool_sentences,
    select_sentences,
    split_sentences,
    words,
)

from .conftest import write_benchdata


def test_only_plain_sentences_of_five_to_sixteen_words_qualify():
    text = ("The cat sat on the mat today. Too short here. It costs 5 dollars and ten cents now. "
            "Which of the following is true about x = y plus two? " + "Word " * 17 + "end.")
    assert split_sentences(text) == ["The cat sat on the mat today."]
    # LibriSpeech references are all capitals: lower-cased, first letter kept upper
    assert split_sentences("HE HOPED THERE WOULD BE STEW FOR DINNER") == ["He hoped there would be stew for dinner"]
    assert words("Don't stop, it's FINE-tuned.") == ["don't", "stop", "it's", "fine", "tuned"]


def _bench(tmp_path):
    rows = {
        "librispeech_test_clean": [{"id": "ls1", "reference": "THE ORCHARD WAS FULL OF RIPE APPLES"},
                                   {"id": "ls2", "reference": "THE ORCHARD WAS FULL OF RIPE APPLES"}],
        "mmlu_pro_mmsu_domains": [{"id": "m1", "question": "Photosynthesis needs light and water. "
                                                           "A fox ran into the deep dark orchard. Ok?"}],
    }
    return write_benchdata(tmp_path, rows)


def test_the_pool_reads_dev_texts_once_per_distinct_sentence(tmp_path, caplog):
    pool = pool_sentences(_bench(tmp_path))
    assert pool == [
        Sentence("ls1#0", "The orchard was full of ripe apples", "librispeech_test_clean"),
        Sentence("m1#0", "Photosynthesis needs light and water.", "mmlu_pro_mmsu_domains"),
        Sentence("m1#1", "A fox ran into the deep dark orchard.", "mmlu_pro_mmsu_domains"),
    ]
    assert "librispeech_test_other" in caplog.text  # a missing set is named, not fatal
    (tmp_path / "librispeech_test_other").mkdir()
    (tmp_path / "librispeech_test_other" / "dev.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match=r"librispeech_test_other/dev.jsonl:1: expected a record with 'id' and 'reference'"):
        pool_sentences(tmp_path)


def test_greedy_choice_prefers_new_words_per_word_and_stops_when_nothing_is_needed():
    pool = [Sentence("a", "the cat sat on the big mat", "s"),     # 1 new word (mat) of 7
            Sentence("b", "zebras graze beside quiet lakes", "s"),  # 5 new words of 5
            Sentence("c", "zebras graze beside quiet lakes again", "s"),
            Sentence("d", "the cat sat on the big mat again", "s")]
    known = ["the cat sat on the big rug"] * 3
    # target 1: "b" covers zebras..lakes, then "d" adds "mat" and "again" (2/8) over "a" (1/7)
    assert [s.id for s in select_sentences(pool, known, n=10, target=1)] == ["b", "d"]
    assert [s.id for s in select_sentences(pool, known, n=1, target=1)] == ["b"]
    # target 2: every pool word is needed twice, so the near-duplicates are picked too
    assert [s.id for s in select_sentences(pool, known, n=10, target=2)] == ["b", "c", "d", "a"]
    # a word seen once in the pool is not chased (min_pool_count 2), so nothing here qualifies
    assert select_sentences(pool[:2], known, n=10, target=1) == []
    assert select_sentences(pool, known, n=0) == []


def test_build_writes_ctc_records_and_reuses_cached_recordings(tmp_path, monkeypatch, capsys):
    bench, work = _bench(tmp_path / "bench"), tmp_path / "work"
    spoken = []

    class FakeEngine:
        def synthesize(self, text, voice=None, speed=1.0):
            spoken.append(text)
            return np.full(8000, 0.1, dtype=np.float32), 16000

    monkeypatch.setattr("funaudiochat.default_model.speech_data.TTSEngines.get", lambda self, name: FakeEngine())
    known = ["the orchard was full"]  # "the" and "orchard" (in two pool sentences) are needed
    path = build_vocab_speech(bench, known, work, n=5)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert path == work / "data" / "ctc_vocab.jsonl" and len(rows) == len(spoken) >= 1
    assert "vocabulary sentences: 100%" in capsys.readouterr().err
    for r in rows:
        assert r["id"].startswith("vocab:") and (work / "data" / r["audio"]).is_file()
        assert r["tts"]["engine"] in ("espeak", "piper") and r["source"] in ("librispeech_test_clean", "mmlu_pro_mmsu_domains")
    n_spoken = len(spoken)
    assert build_vocab_speech(bench, known, work, n=5, progress=False) == path and len(spoken) == n_spoken  # cached wavs
    assert "100%" not in capsys.readouterr().err  # no bar
    assert build_vocab_speech(tmp_path / "missing", known, work, n=5) is None
    assert build_vocab_speech(bench, known, work, n=0) is None
