"""load_audio / validate_waveform / save_wav: formats, resampling, and every error path."""

from __future__ import annotations

import os
import logging
import shutil
import stat

import numpy as np
import pytest
import soundfile as sf

from funaudiochat.audio.io import (
    DEFAULT_MAX_SECONDS,
    AudioError,
    AudioFileNotFoundError,
    audio_seconds,
    load_audio,
    save_wav,
    validate_waveform,
)


def _sine(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_stereo_44k_becomes_mono_16k(tmp_path, suffix):
    left, right = _sine(440, 1.0, 44_100, 0.6), _sine(440, 1.0, 44_100, 0.2)
    path = save_wav(tmp_path / f"s{suffix}", np.stack([left, right], axis=1), 44_100)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert x.size == 16_000  # 1 s at 16 kHz
    expected = _sine(440, 1.0, 16_000, 0.4)  # channel mean of 0.6 and 0.2
    mid = slice(1000, 15_000)  # away from the resampler's edge transients
    tol = 0.02 if suffix == ".ogg" else 2e-3  # Vorbis is lossy; PCM_16 + soxr HQ is near exact
    assert np.max(np.abs(x[mid] - expected[mid])) < tol


def test_bytes_and_path_give_the_same_audio(tmp_path):
    path = save_wav(tmp_path / "a.flac", _sine(300, 0.5, 22_050), 22_050)
    from_path = load_audio(path)
    from_bytes = load_audio(path.read_bytes())
    np.testing.assert_array_equal(from_path, from_bytes)
    assert from_path.size == 8000


def test_target_rate_is_respected(tmp_path):
    path = save_wav(tmp_path / "a.wav", _sine(300, 1.0, 16_000), 16_000)
    assert load_audio(path, target_sr=8000).size == 8000
    np.testing.assert_allclose(load_audio(path), _sine(300, 1.0, 16_000), atol=1 / 32768)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioFileNotFoundError, match="nope.wav: audio file not found") as err:
        load_audio(missing)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty.wav: file is empty \(0 bytes\)"):
        load_audio(empty)
    with pytest.raises(AudioError, match=r"empty input \(0 bytes\)"):
        load_audio(b"")


def test_zero_sample_wav(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16_000, subtype="PCM_16")
    with pytest.raises(AudioError, match="zero.wav: file contains zero samples"):
        load_audio(path)


def test_corrupt_data(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    with pytest.raises(AudioError, match="bad.wav: ") as err:
        load_audio(bad)
    if shutil.which("ffmpeg") is None:
        assert "could not decode audio" in str(err.value)
        assert "install ffmpeg" in str(err.value)
    with pytest.raises(AudioError, match="upload.bin: "):
        load_audio(b"not audio at all" * 10, name="upload.bin")


def test_directory_is_refused(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)


def test_silent_audio(tmp_path):
    path = save_wav(tmp_path / "quiet.wav", np.full(16_000, 5e-5, dtype=np.float32), 16_000,
                    subtype="FLOAT")
    with pytest.raises(AudioError, match=r"quiet.wav: audio is silent \(peak \|x\| = 5.00e-05"):
        load_audio(path)
    with pytest.raises(AudioError, match="waveform: audio is silent"):
        validate_waveform(np.zeros(100, dtype=np.float32), 16_000)


def test_nan_and_inf_samples(tmp_path):
    x = _sine(200, 0.1, 16_000)
    x[5] = np.nan
    x[9] = np.inf
    with pytest.raises(AudioError, match=r"mic: 2 NaN/Inf samples \(first at sample 5, 0.000 s\)"):
        validate_waveform(x, 16_000, name="mic")
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16_000, subtype="FLOAT")  # bypass save_wav, which refuses NaN
    with pytest.raises(AudioError, match="nan.wav: 2 NaN/Inf samples"):
        load_audio(path)


def test_over_long_input(tmp_path):
    n = int((DEFAULT_MAX_SECONDS + 1) * 16_000)
    x = np.full(n, 0.1, dtype=np.float32)
    with pytest.raises(AudioError, match=r"audio is 361.0 s long, over the limit of 360 s; the model's "
                                         r"context holds about 6 minutes \(2048 LLM positions at 5 Hz\)"):
        validate_waveform(x, 16_000)
    assert validate_waveform(x, 16_000, max_seconds=None).size == n
    path = save_wav(tmp_path / "long.wav", _sine(300, 4.0, 8000), 8000)
    with pytest.raises(AudioError, match="long.wav: audio is 4.0 s long, over the limit of 3 s"):
        load_audio(path, max_seconds=3)
    assert load_audio(path, max_seconds=None).size == 64_000


def test_validate_waveform_converts_dtypes_and_shapes():
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    out = validate_waveform(pcm, 16_000)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, -1.0, 32767 / 32768])
    stereo = np.stack([np.full(10, 0.2), np.full(10, 0.4)], axis=1)
    np.testing.assert_allclose(validate_waveform(stereo, 16_000), np.full(10, 0.3), rtol=1e-6)
    with pytest.raises(AudioError, match=r"expected a 1-D or \[frames, channels\] array"):
        validate_waveform(np.zeros((2, 2, 2)), 16_000)
    with pytest.raises(AudioError, match="zero samples"):
        validate_waveform(np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match="sample rate must be a positive integer"):
        validate_waveform(np.ones(4, dtype=np.float32), 0)


def test_save_wav_is_atomic_and_replaces(tmp_path):
    target = tmp_path / "sub" / "out.wav"
    save_wav(target, _sine(100, 0.2, 16_000), 16_000)
    first = sf.read(target, dtype="float32")[0]
    save_wav(target, _sine(100, 0.1, 16_000), 16_000)  # overwrite in place
    assert sf.info(target).frames == 1600
    with pytest.raises(AudioError, match="refusing to save NaN/Inf"):
        save_wav(target, np.array([np.nan, 0.0], dtype=np.float32), 16_000)
    assert sf.info(target).frames == 1600  # the failed write left the old file untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.wav"]  # no temp files left
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert first.size == 3200


def test_save_wav_clips_with_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="funaudiochat.audio.io"):
        path = save_wav(tmp_path / "loud.wav", np.array([0.5, 2.0, -3.0], dtype=np.float32), 16_000)
    assert "clipping audio with peak 3.000" in caplog.text
    np.testing.assert_allclose(sf.read(path, dtype="float32")[0], [0.5, 32767 / 32768, -1.0], atol=1e-4)
    with pytest.raises(AudioError, match=r"unsupported suffix '.mp3'"):
        save_wav(tmp_path / "x.mp3", np.zeros(4, dtype=np.float32), 16_000)


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile build has no MP3")
def test_mp3_through_soundfile(tmp_path):
    path = tmp_path / "a.mp3"
    sf.write(path, _sine(440, 1.0, 24_000), 24_000, format="MP3")
    x = load_audio(path)
    assert x.dtype == np.float32 and abs(x.size - 16_000) <= 1200  # MP3 adds encoder delay/padding
    assert 0.3 < np.max(np.abs(x)) < 0.7


FAKE_FFMPEG = r'''#!{python}
"""Stand-in for ffmpeg: decodes b"FAKEAUDIO" payloads to a 440 Hz tone, fails on anything else."""
import math, struct, sys
args = sys.argv[1:]
open({log!r}, "a").write(" ".join(args) + "\n")
src = args[args.index("-i") + 1]
data = sys.stdin.buffer.read() if src == "pipe:0" else open(src, "rb").read()
if not data.startswith(b"FAKEAUDIO"):
    sys.stderr.write("[in#0] Error opening input\nInvalid data found when processing input\n")
    sys.exit(1)
rate = int(args[args.index("-ar") + 1])
n = rate // 2
sys.stdout.buffer.write(struct.pack("<%df" % n, *(0.5 * math.sin(2 * math.pi * 440 * i / rate) for i in range(n))))
'''


@pytest.fixture
def fake_ffmpeg(tmp_path, monkeypatch):
    import sys

    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "ffmpeg_args.log"
    exe = bindir / "ffmpeg"
    exe.write_text(FAKE_FFMPEG.format(python=sys.executable, log=str(log)))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return log


def test_other_formats_go_through_ffmpeg(fake_ffmpeg, tmp_path):
    audio = load_audio(b"FAKEAUDIO m4a payload", name="upload.m4a")
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)
    assert audio.dtype == np.float32 and audio.shape == (8000,)
    np.testing.assert_allclose(audio, expected, atol=1e-6)
    args = fake_ffmpeg.read_text().split()
    assert args[args.index("-i") + 1] == "pipe:0"
    assert args[args.index("-ac") + 1] == "1" and args[args.index("-ar") + 1] == "16000"
    assert args[args.index("-f") + 1] == "f32le"
    path = tmp_path / "question.m4a"
    path.write_bytes(b"FAKEAUDIO from a file")
    assert load_audio(path).shape == (8000,)
    assert str(path) in fake_ffmpeg.read_text()


def test_ffmpeg_failure_names_the_file_and_ffmpegs_reason(fake_ffmpeg, tmp_path):
    path = tmp_path / "broken.m4a"
    path.write_bytes(b"\x00\x01 not audio" * 20)
    with pytest.raises(AudioError, match=r"broken.m4a: ffmpeg could not decode it: Invalid data found when processing input"):
        load_audio(path)


def test_audio_seconds_reads_the_header_or_estimates_from_the_size(tmp_path):
    save_wav(tmp_path / "a.flac", np.zeros(24000, dtype=np.float32) + 0.1, sr=48000)
    assert audio_seconds(tmp_path / "a.flac") == 0.5
    (tmp_path / "b.mp3").write_bytes(b"\xff" * 8000)  # not for libsndfile: 16 kHz 16-bit from its size
    assert audio_seconds(tmp_path / "b.mp3") == 0.25
    with pytest.raises(AudioFileNotFoundError, match="missing.wav: audio file not found"):
        audio_seconds(tmp_path / "missing.wav")
