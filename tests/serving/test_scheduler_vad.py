"""The generation scheduler (cancel latency, slow-client pausing) and turn detection, driven step by step."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from funaudiochat.generation import EndOfTurn, SpeechTokens, TextDelta, TurnOptions
from funaudiochat.processing import Message
from funaudiochat.serving.scheduler import Job, JobFailed, Scheduler
from funaudiochat.serving.settings import ServerSettings, is_loopback
from funaudiochat.serving.vad import EnergyVAD, TurnDetector


def drain(queue: asyncio.Queue) -> list:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_cancel_takes_effect_before_the_next_step(engine):
    loop = asyncio.new_event_loop()
    try:
        sched = Scheduler(engine)
        job = sched.submit(Job(engine.conversation(), [Message("user", "hello")], TurnOptions(max_seconds=60), loop, high_water=10**6))
        for _ in range(8):
            sched.run_once()
        loop.run_until_complete(asyncio.sleep(0))  # deliver the call_soon_threadsafe puts
        before = drain(job.queue)
        steps = job.turn.rows[0].steps
        job.cancel(spoken_tokens=4)
        sched.run_once()
        loop.run_until_complete(asyncio.sleep(0))
        after = drain(job.queue)
    finally:
        loop.close()
    assert steps == 8 and job.turn.rows[0].steps == steps  # no backbone step after the cancel
    assert any(isinstance(e, TextDelta) for e in before)
    assert not any(isinstance(e, (TextDelta, SpeechTokens)) for e in after)
    end = after[-1]
    assert isinstance(end, EndOfTurn) and end.reason == "cancelled" and len(end.speech_tokens) == 4
    assert job.finished and sched.active == 0
    assert job.conv.messages[-1].speech_tokens == end.speech_tokens  # history keeps what was heard


def test_a_slow_reader_pauses_only_its_own_reply(engine):
    loop = asyncio.new_event_loop()
    try:
        sched = Scheduler(engine, max_batch=1)  # one turn per job (batched: test_scheduler_batching.py)
        slow = sched.submit(Job(engine.conversation(), [Message("user", "a")], TurnOptions(max_seconds=60), loop, high_water=3))
        fast = sched.submit(Job(engine.conversation(), [Message("user", "b")], TurnOptions(max_seconds=60), loop, high_water=10**6))
        for _ in range(10):
            sched.run_once()
        loop.run_until_complete(asyncio.sleep(0))
        slow_steps, fast_steps = slow.turn.rows[0].steps, fast.turn.rows[0].steps
        assert slow._paused_since is not None
        # the slow client reads its backlog: its reply resumes
        async def read_some():
            events = slow.events()
            for _ in range(3):
                await events.__anext__()
        loop.run_until_complete(read_some())
        sched.run_once()
        resumed = slow.turn.rows[0].steps
        for job in (slow, fast):
            job.cancel()
        sched.run_once()
    finally:
        loop.close()
    assert fast_steps == 10 and slow_steps < fast_steps  # paused once 3 events were unread
    assert resumed == slow_steps + 1


def test_a_failing_start_is_reported_not_raised(engine):
    loop = asyncio.new_event_loop()
    try:
        sched = Scheduler(engine)
        job = sched.submit(Job(engine.conversation(), [Message("user", audio=np.ones(100, dtype=np.float32))], TurnOptions(), loop))
        sched.run_once()
        loop.run_until_complete(asyncio.sleep(0))
        items = drain(job.queue)
    finally:
        loop.close()
    assert len(items) == 1 and isinstance(items[0], JobFailed)
    assert items[0].code == "invalid_input" and "shorter than one 40 ms speech frame" in items[0].message


class Scripted:
    """A scorer that returns preset probabilities, one per window."""

    def __init__(self, probs):
        self.probs = list(probs)

    def reset(self):
        pass

    def __call__(self, window):
        assert window.shape == (512,)
        return self.probs.pop(0)


def test_turn_detector_hysteresis_and_silence():
    # 3 quiet, 1 blip (ignored: shorter than min_speech), 1 quiet, 10 speech, 2 below the low threshold
    # but above it once in between (resets the silence count), then 10 quiet
    probs = [0.1] * 3 + [0.9] + [0.1] + [0.9] * 10 + [0.2, 0.2, 0.4, 0.2] + [0.1] * 10
    det = TurnDetector(Scripted(probs), threshold=0.5, silence_ms=320, min_speech_ms=64)  # 10 / 2 windows
    events = det.push(np.zeros(512 * len(probs) + 100, dtype=np.float32))
    assert [(e.kind, e.sample) for e in events] == [("speech_started", 5 * 512), ("speech_stopped", 18 * 512)]
    assert len(det.buffer) == 100 and not det.speaking


def test_energy_vad_orders_loud_above_quiet():
    vad = EnergyVAD()
    t = np.arange(512) / 16000
    assert vad(np.zeros(512, dtype=np.float32)) < 0.01
    assert vad((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)) > 0.99


def test_silero_scores_speech_above_silence(tmp_path):
    pytest.importorskip("silero_vad")
    pytest.importorskip("onnxruntime")
    from funaudiochat.serving.vad import SileroSession

    from .conftest import espeak_wav

    speech = espeak_wav("the quick brown fox jumps over the lazy dog", tmp_path / "s.wav", lead=0, tail=0)
    vad = SileroSession().stream()
    windows = [speech[i : i + 512] for i in range(0, len(speech) - 511, 512)]
    probs = [vad(w) for w in windows]
    vad.reset()
    quiet = [vad(np.zeros(512, dtype=np.float32)) for _ in range(20)]
    assert max(probs) > 0.9 and max(quiet) < 0.1
    with pytest.raises(ValueError, match="windows of 512 samples"):
        vad(np.zeros(256, dtype=np.float32))


def test_settings_refuse_exposed_hosts_without_a_key():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(ValueError, match="refusing to serve on '0.0.0.0' without an API key"):
        ServerSettings(host="0.0.0.0")
    assert ServerSettings(host="0.0.0.0", api_key="k").api_key == "k"
    with pytest.raises(ValueError, match="max_sessions must be positive"):
        ServerSettings(max_sessions=0)
