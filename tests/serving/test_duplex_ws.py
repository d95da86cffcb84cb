"""The /v1/duplex full-duplex protocol against a real uvicorn server with real WebSocket clients.

The served model is the tiny random model with an (untrained) duplex head (conftest's ``duplex_server``);
tests decide what it does by setting the action head's bias with the ``head_bias`` fixture.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import torch
import websockets

from funaudiochat.duplex.engine import AudioChunk, Stopped, TurnStart
from funaudiochat.duplex.model import STEP_SAMPLES
from funaudiochat.serving.protocol import DUPLEX_PROTOCOL_VERSION

from funaudiochat.testing import GatedHead

from .conftest import refused_when_full, assert_error_and_alive, error_then_pong, ToneDetokenizer, noise, pcm16, recv_json

TALK = dict(start=10.0, speak=9.0)  # takes the floor at once and keeps it
QUIET = dict(listen=10.0)  # yields the floor (a turn in progress ends normally)
CUT = dict(stop=20.0, listen=15.0)  # in a turn stop wins; afterwards listen does
FRAME = 1600  # 100 ms at 16 kHz


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def open_duplex(server, **update) -> tuple[websockets.ClientConnection, dict]:
    ws = await websockets.connect(server.duplex_url, max_size=None)
    created = await recv_json(ws)
    assert created["type"] == "session.created", created
    if update:
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        ev = await recv_json(ws)
        assert ev["type"] == "session.updated", ev
    return ws, created


async def stream(ws, seconds: float, seed: int = 0) -> None:
    """Microphone audio in 100 ms PCM16 frames."""
    data = pcm16(noise(seconds, seed))
    for i in range(0, len(data), 2 * FRAME):
        await ws.send(data[i : i + 2 * FRAME])


async def collect(ws, stop: Callable[[dict], bool], timeout: float = 60.0) -> list[dict | bytes]:
    """Every frame, in order, up to and including the first JSON event for which ``stop`` is true."""
    frames: list[dict | bytes] = []
    while True:
        frame = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(frame, bytes):
            frames.append(frame)
            continue
        ev = json.loads(frame)
        frames.append(ev)
        if stop(ev):
            return frames


def action_at(step: int) -> Callable[[dict], bool]:
    return lambda ev: ev["type"] == "action" and ev["step"] == step


def events(frames: list[dict | bytes]) -> list[dict]:
    return [f for f in frames if isinstance(f, dict)]


def from_step(frames: list[dict | bytes], step: int) -> list[dict | bytes]:
    """The frames of steps ``step`` and later (a binary frame belongs to the step of its header).

    A step's action event comes before its other events, so a read that stops at an action leaves
    the rest of that step for the next read: tests join their reads and split them by step.
    """
    out, current = [], -1
    for f in frames:
        if isinstance(f, dict):
            current = f.get("step", current)
        if current >= step:
            out.append(f)
    return out


def check_audio_framing(frames: list[dict | bytes]) -> None:
    """Every turn.audio.delta is followed at once by its binary frame, and every binary frame has one."""
    for i, f in enumerate(frames):
        if isinstance(f, bytes):
            assert i > 0 and isinstance(frames[i - 1], dict) and frames[i - 1]["type"] == "turn.audio.delta"
        elif f["type"] == "turn.audio.delta":
            assert isinstance(frames[i + 1], bytes) and len(frames[i + 1]) == 2 * f["samples"]


def runner_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("duplex-runner-")]


def wait_closed(server, timeout: float = 20.0) -> dict:
    """/healthz once the server has no duplex session and no runner thread left."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"{server.url}/healthz").json()
        if (health["duplex_sessions"] == 0 and not runner_threads()) or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


# ---------------------------------------------------------------------- a conversation
def test_a_turn_streams_in_protocol_order(duplex_server, head_bias):
    async def main():
        ws, created = await open_duplex(duplex_server, actions=True, max_turn_seconds=60)
        with head_bias(**TALK):
            await stream(ws, 1.6)  # steps 0-7: the assistant takes the floor and speaks
            talk = await collect(ws, action_at(7))
        with head_bias(**QUIET):
            await stream(ws, 0.6, seed=1)  # steps 8-10: it yields the floor
            rest = await collect(ws, action_at(10))
        await ws.close()
        return created, talk + rest

    created, frames = run(main())
    assert created["protocol"] == DUPLEX_PROTOCOL_VERSION
    assert created["input_sample_rate"] == 16000 and created["output_sample_rate"] == 16000
    assert created["audio_output"] is True and created["step_ms"] == 200
    assert created["session"]["actions"] is False and created["session"]["max_turn_seconds"] == 30.0
    evs = events(frames)
    assert [e["step"] for e in evs if e["type"] == "action"] == list(range(11))  # every step, once, in order
    assert [e["step"] for e in evs] == sorted(e["step"] for e in evs)  # events come in step order
    kinds = [e["type"] for e in evs if e["type"] != "action"]
    assert kinds[0] == "turn.started" and kinds[-1] == "turn.done"
    assert set(kinds[1:-1]) <= {"turn.text.delta", "turn.speech_tokens", "turn.audio.delta"}
    start = next(e for e in evs if e["type"] == "turn.started")
    assert start == {"type": "turn.started", "step": 0, "turn": 1, "kind": "turn"}
    assert evs[0] == {**evs[0], "type": "action", "step": 0, "action": "start", "forced": False}
    assert 0 < evs[0]["prob"] <= 1
    check_audio_framing(frames)
    tokens = [t for e in evs if e["type"] == "turn.speech_tokens" for t in e["tokens"]]
    assert len(tokens) == 5 * (8 - 2)  # 2 delay steps, then 5 speech tokens a step
    audio = np.frombuffer(b"".join(f for f in frames if isinstance(f, bytes)), dtype="<i2").astype(np.float32) / 32767
    np.testing.assert_allclose(audio, ToneDetokenizer.render(tokens), atol=1e-4)  # every token's audio, in order
    headers = [e for e in evs if e["type"] == "turn.audio.delta"]
    assert [h["seq"] for h in headers] == list(range(len(headers)))
    assert all(h["turn"] == 1 and h["sample_rate"] == 16000 for h in headers)
    text = "".join(e["delta"] for e in evs if e["type"] == "turn.text.delta")
    done = evs[-1] if evs[-1]["type"] == "turn.done" else next(e for e in evs if e["type"] == "turn.done")
    assert done["step"] == 8 and done["turn"] == 1 and done["reason"] == "listen" and done["interrupted"] is False
    assert done["text"] == text.strip()
    assert done["speech_tokens"] == len(tokens) and done["audio_samples"] == len(audio)
    assert [e["action"] for e in evs if e["type"] == "action"][8:] == ["listen"] * 3


def test_a_stop_drops_the_rest_of_the_turn(duplex_server, head_bias):
    async def main():
        ws, _ = await open_duplex(duplex_server, actions=True, max_turn_seconds=60)
        with head_bias(**TALK):
            await stream(ws, 1.6)
            frames = await collect(ws, action_at(7))
        with head_bias(**CUT):  # the user barges in: the head says stop
            await stream(ws, 0.8, seed=1)
            frames += await collect(ws, action_at(11))
        await ws.close()
        return frames

    frames = run(main())
    after = from_step(frames, 8)
    assert any(isinstance(f, bytes) for f in frames[: len(frames) - len(after)])  # it was speaking
    evs = events(after)
    assert evs[0] == {**evs[0], "type": "action", "step": 8, "action": "stop", "forced": False}
    assert evs[1] == {"type": "turn.stopped", "step": 8, "turn": 1}
    assert evs[2] == {**evs[2], "type": "turn.done", "turn": 1, "reason": "stop", "interrupted": True}
    assert not any(isinstance(f, bytes) for f in after)  # no audio of the cut turn (or any other) afterwards
    assert {e["type"] for e in evs[3:]} == {"action"}
    assert [e["action"] for e in evs[3:]] == ["listen"] * 3


def test_an_interrupt_message_forces_a_stop_at_the_next_step(duplex_server, head_bias):
    async def main():
        ws, _ = await open_duplex(duplex_server, actions=True, max_turn_seconds=60)
        with head_bias(**TALK):
            await stream(ws, 1.0)
            frames = await collect(ws, action_at(4))
            await ws.send(json.dumps({"type": "interrupt"}))  # e.g. the page's stop button
            await stream(ws, 0.6, seed=1)
            frames += await collect(ws, action_at(7))
        await ws.close()
        return frames

    evs = events(from_step(run(main()), 5))
    assert evs[0] == {**evs[0], "type": "action", "step": 5, "action": "stop", "forced": True}
    assert evs[1] == {"type": "turn.stopped", "step": 5, "turn": 1}
    assert evs[2]["type"] == "turn.done" and evs[2]["turn"] == 1 and evs[2]["reason"] == "stop"
    assert all(e.get("turn") != 1 for e in evs[3:])  # nothing more of turn 1
    assert {"type": "turn.started", "step": 6, "turn": 2, "kind": "turn"} in evs  # the head still wants to talk


def test_unsent_audio_of_a_stopped_turn_is_dropped_and_a_slow_client_ends(duplex_server):
    from funaudiochat.serving.duplex import DuplexConnection

    async def main():
        conn = DuplexConnection(duplex_server.state, duplex_server.state.duplex)
        conn._accept(TurnStart(0, 1, "turn"))
        for step in range(3):
            conn._accept(AudioChunk(step, 1, [1, 2, 3, 4, 5], np.zeros(3200, dtype=np.float32), 16000))
        conn._accept(Stopped(3, 1))
        queued = list(conn._items)
        slow = DuplexConnection(duplex_server.state, duplex_server.state.duplex)
        for step in range(slow.max_pending + 1):
            slow._accept(TurnStart(step, step + 1, "turn"))
        return queued, slow

    queued, slow = run(main())
    assert queued == [TurnStart(0, 1, "turn"), Stopped(3, 1)]
    assert slow.aborted.is_set() and slow.end[1] == "slow_client"
    assert [json.loads(f)["error"]["code"] for f in slow._items[0]] == ["slow_client"]


# ---------------------------------------------------------------------- the microphone never waits
def test_audio_and_control_frames_are_taken_while_the_model_is_busy(duplex_server, duplex_model):
    head = duplex_model.duplex_head
    gate = GatedHead(head)

    async def main():
        ws, created = await open_duplex(duplex_server, actions=True)
        conn = duplex_server.state.duplex_live[created["session_id"]]
        await stream(ws, 0.2)
        assert await asyncio.to_thread(gate.entered.wait, 10), "the runner never started step 0"
        await stream(ws, 1.0, seed=1)  # 5 more steps while step 0 is stuck
        await ws.send(json.dumps({"type": "ping", "id": 1}))
        pong = await recv_json(ws)
        received, step = conn.session.samples_received, conn.session.step
        gate.release.set()
        frames = await collect(ws, action_at(5))
        await ws.close()
        return pong, received, step, frames

    duplex_model.duplex_head = gate
    try:
        pong, received, step, frames = run(main())
    finally:
        gate.release.set()
        duplex_model.duplex_head = head
    assert pong == {"type": "pong", "id": 1}
    assert received == 6 * STEP_SAMPLES and step == 0  # all audio was taken while the model was stuck
    assert [e["step"] for e in events(frames) if e["type"] == "action"] == list(range(6))  # and none was lost


# ---------------------------------------------------------------------- refusals, errors, limits
def test_the_half_duplex_server_refuses_duplex_and_says_why(server):
    async def main():
        ws = await websockets.connect(server.duplex_url)
        err = await recv_json(ws)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(ws)
        realtime = await websockets.connect(server.ws_url)
        created = await recv_json(realtime)
        await realtime.close()
        return err, closed.value, created

    err, closed, created = run(main())
    assert err["type"] == "error" and err["error"]["code"] == "duplex_unavailable"
    assert "no duplex action head" in err["error"]["message"] and "/v1/realtime" in err["error"]["message"]
    assert closed.rcvd.code == 1008
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["duplex"]["available"] is False and "no duplex action head" in health["duplex"]["reason"]
    assert created["duplex"] == health["duplex"]  # what the page reads to disable its duplex switch


def test_the_duplex_server_says_so(duplex_server):
    health = httpx.get(f"{duplex_server.url}/healthz").json()
    assert health["duplex"] == {"available": True, "endpoint": "/v1/duplex", "reason": None}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"no_type": 1}', "invalid_message"),
        ('{"type": "input_text", "text": "hi"}', "unknown_type"),  # half-duplex only
        ('{"type": "response.cancel"}', "unknown_type"),
        (b"\x01\x02\x03", "invalid_audio"),
        ('{"type": "input_audio.append", "audio": "@@@"}', "invalid_audio"),
        ('{"type": "session.update", "session": {"mode": "s2s"}}', "invalid_value"),
        ('{"type": "session.update", "session": {"actions": "yes"}}', "invalid_value"),
        ('{"type": "session.update", "session": {"voice": "bass"}}', "invalid_value"),
        ('{"type": "session.update", "session": {"max_turn_seconds": 600}}', "invalid_value"),
        ('{"type": "session.update", "session": {"min_start_prob": 2}}', "invalid_value"),
    ],
)
def test_malformed_frames_get_error_events_and_the_session_survives(duplex_server, frame, code):
    async def main():
        ws, _ = await open_duplex(duplex_server)
        return await error_then_pong(ws, frame)

    assert_error_and_alive(*run(main()), code)


def test_settings_are_fixed_once_the_audio_starts(duplex_server):
    async def main():
        ws, _ = await open_duplex(duplex_server, instructions="be brief", seed=3)
        await stream(ws, 0.2)
        await ws.send(json.dumps({"type": "session.update", "session": {"seed": 4}}))
        err = await recv_json(ws)
        await ws.close()
        return err

    err = run(main())
    assert err["error"]["code"] == "session_active" and "before the first audio" in err["error"]["message"]


def test_the_context_limit_ends_the_session_cleanly(duplex_server):
    engine = duplex_server.state.duplex
    old = engine.max_steps

    async def main():
        ws, _ = await open_duplex(duplex_server, actions=True)
        await stream(ws, 1.0)
        frames = await collect(ws, lambda ev: ev["type"] == "error")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(ws)
        return frames, closed.value

    engine.max_steps = 3  # a tiny context
    try:
        frames, closed = run(main())
    finally:
        engine.max_steps = old
    evs = events(frames)
    assert [e["step"] for e in evs if e["type"] == "action"] == [0, 1, 2]
    err = evs[-1]["error"]
    assert err["code"] == "context_full" and "open a new session" in err["message"] and err["step"] == 3
    assert closed.rcvd.code == 1000 and closed.rcvd.reason == "context_full"
    health = wait_closed(duplex_server)
    assert health["duplex_sessions"] == 0 and not runner_threads()


def test_a_model_failure_is_an_internal_error_and_ends_the_session(duplex_server, duplex_model):
    head = duplex_model.duplex_head

    class Broken(torch.nn.Module):
        weight = head.weight

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    async def main():
        ws, _ = await open_duplex(duplex_server)
        await stream(ws, 0.4)
        err = await recv_json(ws)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(ws)
        return err, closed.value

    duplex_model.duplex_head = Broken()
    try:
        err, closed = run(main())
    finally:
        duplex_model.duplex_head = head
    assert err["error"]["code"] == "internal_error" and "step 0" in err["error"]["message"]
    assert closed.rcvd.code == 1011
    assert wait_closed(duplex_server)["duplex_sessions"] == 0


@pytest.mark.parametrize("how", ["close", "abort"])
def test_closing_the_socket_stops_the_runner_thread(duplex_server, how):
    async def main():
        ws, created = await open_duplex(duplex_server, actions=True)
        await stream(ws, 0.6)
        await collect(ws, action_at(2))
        alive = [t.name for t in runner_threads()]
        if how == "close":
            await ws.close()
        else:
            ws.transport.abort()  # vanish without a closing handshake, like a dropped network
        return alive

    alive = run(main())
    assert len(alive) == 1
    health = wait_closed(duplex_server)
    assert health["duplex_sessions"] == 0 and health["sessions"] == 0
    assert not runner_threads()
    assert duplex_server.state.duplex_live == {}


def test_duplex_session_limit(duplex_server):
    async def main():
        held = [await open_duplex(duplex_server) for _ in range(2)]  # max_duplex_sessions=2
        return await refused_when_full(held, duplex_server.duplex_url)

    err, closed = run(main())
    assert err["error"]["code"] == "too_many_sessions" and "full-duplex" in err["error"]["message"]
    assert closed.rcvd.code == 1013
    assert wait_closed(duplex_server)["duplex_sessions"] == 0

