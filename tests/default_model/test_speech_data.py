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


def test_cached_audio_gives_four_records_per_question_without_tts(tmp_path, capsys):
    """With the wavs and answer tokens cached, no TTS engine or tokenizer runs; with ``answer_asr`` every
    question gets its spoken reply, text reply, question transcription and answer transcription."""
    import json

    import numpy as np

    from funaudiochat.speech.audio import write_wav_atomic

    qs = [Question("a", "What is one?", "builtin"), Question("b", "What is two?", "builtin")]
    answers = {"a": "One.", "b": "Two."}
    wav = tmp_path / "data" / "wav"
    wav.mkdir(parents=True)
    tone = (0.1 * np.sin(np.arange(8000) / 5.0)).astype(np.float32)
    for q in qs:
        write_wav_atomic(wav / f"{q.id}_q.wav", tone, 16000)
        write_wav_atomic(wav / f"{q.id}_a.wav", tone, 16000)
    (tmp_path / "data" / "answer_tokens.jsonl").write_text(
        "".join(json.dumps({"id": q.id, "tokens": [1, 2, 3]}) + "\n" for q in qs))
    assert build_speech_data(qs, answers, tmp_path).n_sft == 6  # three records each by default
    assert "speech data: 100%" in capsys.readouterr().err  # the stage's progress bar, on stderr
    out = build_speech_data(qs, answers, tmp_path, answer_asr=True, progress=False)
    assert "100%" not in capsys.readouterr().err  # no bar
    rows = [json.loads(line) for line in out.sft.read_text().splitlines()]
    assert out.n_sft == 8 and len(rows) == 8
    assert [r["id"] for r in rows[:4]] == ["a", "a:text", "a:asr", "a:asr_answer"]
    asr_a = rows[3]
    assert asr_a["task"] == "asr"
    assert asr_a["messages"][1]["audio"] == "wav/a_a.wav"
    assert asr_a["messages"][2] == {"role": "assistant", "content": "One."}
    assert (wav / "a_q_noisy.wav").is_file() and out.n_dpo == 2


def test_noisy_copy_is_fixed_by_the_id_and_never_rewritten(tmp_path):
    """Same id, same file (a rerun of the build or the session-11 script reproduces it); another id
    gives another SNR and noise; an existing file is kept, whatever audio is passed."""
    import numpy as np

    from funaudiochat.default_model.speech_data import write_noisy_copy
    from funaudiochat.speech.audio import load_audio

    tone = (0.1 * np.sin(np.arange(16000) / 5.0)).astype(np.float32)
    a, b, c = tmp_path / "a1.wav", tmp_path / "a2.wav", tmp_path / "b.wav"
    write_noisy_copy(a, tone, "qa")
    write_noisy_copy(b, tone, "qa")
    write_noisy_copy(c, tone, "qb")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    for path in (a, c):
        noise = load_audio(path).astype(np.float64) - tone
        snr = 10 * np.log10(np.mean(tone.astype(np.float64) ** 2) / np.mean(noise**2))
        assert 4.9 < snr < 15.1  # the default range, 5-15 dB (16-bit rounding aside)
    before = a.read_bytes()
    write_noisy_copy(a, np.zeros_like(tone), "qa")  # silent input would raise if it were used
    assert a.read_bytes() == before
