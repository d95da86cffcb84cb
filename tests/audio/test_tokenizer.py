"""Speech tokenizers: the shipped k-means artefact, its round trip, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from funaudiochat.audio.tokenizer import (
    S3_MODELS,
    KMeansSpeechTokenizer,
    S3Tokenizer,
    default_tokenizer_dir,
    load_tokenizer,
    nearest_centroid,
    sha256_file,
)

from .conftest import chirp


@pytest.fixture(scope="module")
def tok(tiny_en_dir: Path) -> KMeansSpeechTokenizer:
    return KMeansSpeechTokenizer.from_pretrained()


def test_shipped_manifest_matches_file() -> None:
    folder = default_tokenizer_dir()
    meta = json.loads((folder / "tokenizer.json").read_text())
    assert meta["version"] == 1 and meta["encoder_source"] == "tiny.en"
    assert meta["codebook_size"] == 1024 and meta["dim"] == 384 and meta["frame_rate"] == 25
    assert sha256_file(folder / "centroids.safetensors") == meta["files"]["centroids.safetensors"]["sha256"]
    assert (folder / "centroids.safetensors").stat().st_size < 1_000_000  # fp16, small


@pytest.mark.parametrize("seconds", [0.04, 1.0, 2.37])
def test_encode_length_range_and_determinism(tok: KMeansSpeechTokenizer, seconds: float) -> None:
    audio = chirp(seconds)
    ids = tok.encode(audio)
    assert len(ids) == int(audio.size * 25 / 16000) == tok.token_count(audio.size)
    assert all(isinstance(i, int) and 0 <= i < tok.codebook_size for i in ids)
    assert tok.encode(audio) == ids
    assert tok.frame_rate == 25 and tok.codebook_size == 1024


def test_different_audio_gives_different_ids(tok: KMeansSpeechTokenizer) -> None:
    a, b = tok.encode(chirp(1.0, seed=0)), tok.encode(np.ascontiguousarray(chirp(1.0, seed=0)[::-1]))
    assert a != b


def test_artefact_round_trip(tok: KMeansSpeechTokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path / "copy")
    again = KMeansSpeechTokenizer.from_pretrained(tmp_path / "copy", encoder=tok.encoder)
    assert torch.equal(again.centroids, tok.centroids)
    audio = chirp(1.5, seed=3)
    assert again.encode(audio) == tok.encode(audio)
    meta = json.loads((tmp_path / "copy" / "tokenizer.json").read_text())
    assert meta["files"]["centroids.safetensors"]["sha256"] == sha256_file(tmp_path / "copy" / "centroids.safetensors")


def test_tampered_artefact_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(default_tokenizer_dir(), folder)
    data = bytearray((folder / "centroids.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "centroids.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        KMeansSpeechTokenizer.from_pretrained(folder, encoder=torch.nn.Identity())


def test_missing_artefact_names_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        KMeansSpeechTokenizer.from_pretrained(tmp_path)


def test_wrong_version_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(default_tokenizer_dir(), folder)
    meta = json.loads((folder / "tokenizer.json").read_text())
    meta["version"] = 99
    (folder / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="version 99"):
        KMeansSpeechTokenizer.from_pretrained(folder, encoder=torch.nn.Identity())


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros((2, 16000), np.float32), "1-D"),
        (np.zeros(100, np.float32), "too short"),
        (np.zeros(16000, np.int16), "float"),
        (np.full(16000, np.nan, np.float32), "NaN"),
    ],
)
def test_bad_audio(tok: KMeansSpeechTokenizer, audio: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tok.encode(audio)


def test_nearest_centroid_exact() -> None:
    c = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.tensor([[9.0, 1.0], [0.5, 0.2], [1.0, 8.0], [6.0, 0.0]])
    assert nearest_centroid(x, c, block=3).tolist() == [1, 0, 2, 1]


def test_kmeans_recovers_separated_clusters() -> None:
    from funaudiochat.audio.train_codec import kmeans

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    cent, inertia = kmeans(x, 4, iters=10)
    assert inertia < 0.05
    found = sorted(tuple(round(v) for v in row.tolist()) for row in cent)
    assert found == [(0, 0), (0, 20), (20, 0), (20, 20)]


def test_s3_missing_weights_names_expected_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"speech_tokenizer_v3_25hz\.onnx"):
        S3Tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"speech_tokenizer_v2_25hz\.onnx"):
        load_tokenizer("s3", tmp_path, name="speech_tokenizer_v2_25hz")
    assert S3_MODELS["speech_tokenizer_v3_25hz"] == (6561, 25)


def test_s3_unknown_name_and_backend(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown S3 tokenizer 'v9'"):
        S3Tokenizer(tmp_path, name="v9")
    with pytest.raises(ValueError, match="needs path"):
        load_tokenizer("s3")
    with pytest.raises(ValueError, match="unknown speech tokenizer backend 'x'"):
        load_tokenizer("x")
