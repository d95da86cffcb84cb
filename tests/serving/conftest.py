"""Shared fixtures: a tiny random model with a fake detokenizer, served on a free loopback port."""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

from funaudiochat.config import tiny_config  # noqa: E402
from funaudiochat.duplex.model import enable_duplex  # noqa: E402
from funaudiochat.generation import Engine  # noqa: E402
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration  # noqa: E402
from funaudiochat.processing import FunAudioChatProcessor  # noqa: E402
from funaudiochat.testing import duplex_head_bias, word_tokenizer  # noqa: E402

SAMPLES_PER_TOKEN = 640  # the fake detokenizer: 40 ms at 16 kHz per 25 Hz speech token
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


class ToneDetokenizer:
    """A stand-in vocoder: each speech token becomes 40 ms of a tone (pitch from the id), in 5-token chunks."""

    sample_rate = 16000
    voices = ("alto", "tenor")

    @staticmethod
    def render(tokens) -> np.ndarray:
        t = np.arange(SAMPLES_PER_TOKEN) / 16000
        return np.concatenate([0.2 * np.sin(2 * np.pi * (200 + tok % 400) * t) for tok in tokens]).astype(np.float32)

    def stream(self, voice):
        render = self.render

        class Stream:
            def __init__(self) -> None:
                self.buf: list[int] = []

            def push(self, tokens):
                self.buf += list(tokens)
                out = []
                while len(self.buf) >= 5:
                    out.append(render(self.buf[:5]))
                    self.buf = self.buf[5:]
                return out

            def flush(self):
                rest = render(self.buf) if self.buf else np.zeros(0, dtype=np.float32)
                self.buf = []
                return rest

        return Stream()


@pytest.fixture(scope="session")
def engine() -> Engine:
    torch.manual_seed(0)
    cfg = tiny_config()
    model = FunAudioChatForConditionalGeneration(cfg)
    return Engine(model, FunAudioChatProcessor(word_tokenizer(vocab_size=512), cfg), detokenizer=ToneDetokenizer())


@pytest.fixture(scope="module")
def settings():
    from funaudiochat.serving.settings import ServerSettings

    return ServerSettings(max_audio_seconds=3.0, max_sessions=4, default_output_seconds=2.0, max_output_seconds=60.0,
                          max_frame_bytes=256 * 1024, max_request_bytes=2 * 1024 * 1024, max_http_concurrency=2)


@pytest.fixture(scope="module")
def server(engine, settings):
    from funaudiochat.serving.server import BackgroundServer

    with BackgroundServer(engine, settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def duplex_model() -> FunAudioChatForConditionalGeneration:
    """The tiny random model with an untrained duplex head (tests steer it with :func:`head_bias`)."""
    torch.manual_seed(0)
    return enable_duplex(FunAudioChatForConditionalGeneration(tiny_config())).eval()


@pytest.fixture(scope="module")
def duplex_server(duplex_model):
    """A server whose model has a duplex head, so /v1/duplex takes sessions (at most 2 at a time)."""
    from funaudiochat.serving.server import BackgroundServer
    from funaudiochat.serving.settings import ServerSettings

    settings = ServerSettings(max_sessions=4, max_duplex_sessions=2, default_output_seconds=30.0, max_output_seconds=60.0,
                              max_frame_bytes=256 * 1024)
    engine = Engine(duplex_model, FunAudioChatProcessor(word_tokenizer(vocab_size=512), duplex_model.config),
                    detokenizer=ToneDetokenizer())
    with BackgroundServer(engine, settings) as srv:
        yield srv


@pytest.fixture
def head_bias(duplex_model):
    """``with head_bias(start=10.0): ...`` sets the served duplex head's bias (its weights are ~0, so the
    bias decides the action); the runner reads it at its next step, and it is restored afterwards."""

    return functools.partial(duplex_head_bias, duplex_model)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def espeak_wav(text: str, path: Path, lead: float = 0.5, tail: float = 3.0) -> np.ndarray:
    """Synthetic speech (espeak-ng) at 16 kHz with silence around it, written to ``path``; skips without espeak-ng."""
    import soundfile as sf

    from funaudiochat.audio.io import load_audio

    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    raw = path.with_suffix(".raw.wav")
    subprocess.run([exe, "-w", str(raw), text], check=True, capture_output=True)
    speech = load_audio(raw)
    audio = np.concatenate([np.zeros(int(16000 * lead)), speech, np.zeros(int(16000 * tail))]).astype(np.float32)
    sf.write(path, audio, 16000, subtype="PCM_16")
    return audio


async def recv_json(ws, timeout: float = 60.0) -> dict:
    """The next JSON event (binary frames are skipped)."""
    while True:
        frame = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(frame, str):
            return json.loads(frame)


async def error_then_pong(ws, frame: str) -> tuple[dict, dict]:
    """Send a bad ``frame``, then a ping: the error event, and the pong that shows the session lives on."""
    await ws.send(frame)
    err = await recv_json(ws)
    await ws.send(json.dumps({"type": "ping", "id": 7}))
    pong = await recv_json(ws)
    await ws.close()
    return err, pong


def assert_error_and_alive(err: dict, pong: dict, code: str) -> None:
    assert err["type"] == "error" and err["error"]["code"] == code, err
    assert err["error"]["message"]
    assert pong == {"type": "pong", "id": 7}


async def refused_when_full(held: list, url: str):
    """With ``held`` sessions filling the server, a new connection's error event and close frame."""
    import websockets

    extra = await websockets.connect(url)
    err = await recv_json(extra)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv_json(extra)
    for ws, _ in held:
        await ws.close()
    return err, closed.value


async def until(ws, kind: str, timeout: float = 60.0) -> tuple[dict, list[dict], list[bytes]]:
    """Read until an event of type ``kind``; returns it, the JSON events before it and the binary frames."""
    events, binary = [], []
    while True:
        frame = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(frame, bytes):
            binary.append(frame)
            continue
        ev = json.loads(frame)
        if ev["type"] == kind:
            return ev, events, binary
        events.append(ev)
