"""The scheduler batching concurrent replies into one turn, driven round by round.

The model is a tiny one over-fitted on the three messages below, so that each has a known greedy
reply of its own length, with the tone detokenizer, so every reply streams text, speech tokens and
audio.  (Replies to inputs a model was not trained on depend on the machine's float kernels: an
AVX2 machine answers "hello" differently from an AVX-512 one.)
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from funaudiochat.config import tiny_config
from funaudiochat.generation import AudioChunk, Engine, EndOfTurn, SamplingConfig, SpeechTokens, TextDelta, TurnOptions
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.processing import FunAudioChatProcessor, Message
from funaudiochat.serving.scheduler import Job, JobFailed, Scheduler
from funaudiochat.testing import word_tokenizer
from tests.generation.conftest import SPEECH, SYSTEM, overfit, user_audio

from .conftest import ToneDetokenizer

OPTS = TurnOptions(mode="s2s", max_seconds=5, speech_sampling=SamplingConfig())
MESSAGES = [Message("user", audio=user_audio()), Message("user", "hello"), Message("user", audio=user_audio(3, 0.5))]
# what the model is over-fitted to answer to each message: the second reply is the short one
REPLIES = [("paris is the capital", SPEECH), ("hi", list(range(140, 152))),
           ("the capital of france is paris", list(range(160, 208)))]
SHORT = 1
STEPS = [11, 7, 14]  # rounds of each greedy reply alone
FOLLOW_UP = Message("user", "what is two plus two ?")


@pytest.fixture(scope="module")
def trained() -> Engine:
    torch.manual_seed(0)
    cfg = tiny_config()
    proc = FunAudioChatProcessor(word_tokenizer(vocab_size=512), cfg)
    model = FunAudioChatForConditionalGeneration(cfg)
    convs = [[Message("system", SYSTEM), m, Message("assistant", text, speech_tokens=speech)]
             for m, (text, speech) in zip(MESSAGES, REPLIES)]
    overfit(model, proc.collate([proc.encode(c) for c in convs]), 200)
    return Engine(model.eval(), proc, detokenizer=ToneDetokenizer())


class Driver:
    """Runs a scheduler round by round on this thread; its readers consume events like a session does."""

    def __init__(self, engine: Engine, **kwargs) -> None:
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self.sched = Scheduler(engine, **kwargs)
        self.rounds = 0
        self.jobs: list[Job] = []
        self.got: dict[str, list] = {}
        self.ended_at: dict[str, int] = {}  # job id -> round of its EndOfTurn / JobFailed
        self.paused: set[str] = set()  # jobs whose reader is not reading

    def submit(self, message: Message, options: TurnOptions = OPTS, conv=None, high_water: int = 10**6) -> Job:
        conv = conv or self.engine.conversation(system_prompt=SYSTEM)
        job = self.sched.submit(Job(conv, [message], options, self.loop, high_water=high_water))
        self.jobs.append(job)
        self.got[job.id] = []
        return job

    def read(self, job: Job, n: int | None = None) -> None:
        """Consume up to ``n`` delivered events of ``job`` through :meth:`Job.events` (all if None)."""
        self.loop.run_until_complete(asyncio.sleep(0))  # deliver the call_soon_threadsafe puts
        n = job.queue.qsize() if n is None else min(n, job.queue.qsize())

        async def take() -> list:
            out: list = []
            stream = job.events()
            try:
                while len(out) < n:
                    out.append(await stream.__anext__())
            except StopAsyncIteration:
                pass
            finally:
                await stream.aclose()
            return out

        items = self.loop.run_until_complete(take()) if n else []
        self.got[job.id] += items
        if any(isinstance(i, (EndOfTurn, JobFailed)) for i in items):
            self.ended_at[job.id] = self.rounds

    def round(self) -> None:
        self.sched.run_once()
        self.rounds += 1
        for job in self.jobs:
            if job.id not in self.paused:
                self.read(job)

    def run(self, limit: int = 200) -> None:
        while self.sched.active:
            assert self.rounds < limit, "the scheduler did not finish"
            self.round()
        for job in self.jobs:
            self.read(job)

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def drive(trained):
    drivers: list[Driver] = []

    def make(**kwargs) -> Driver:
        drivers.append(Driver(trained, **kwargs))
        return drivers[-1]

    yield make
    for d in drivers:
        d.close()


def outcome(items: list) -> tuple:
    """What a client of one job saw: streamed text, speech tokens, audio, and the end of turn."""
    end = items[-1]
    assert isinstance(end, EndOfTurn), end
    text = "".join(e.text for e in items if isinstance(e, TextDelta))
    tokens = [t for e in items if isinstance(e, SpeechTokens) for t in e.tokens]
    chunks = [e.audio for e in items if isinstance(e, AudioChunk)]
    audio = np.concatenate(chunks).tolist() if chunks else []
    return text, tokens, audio, (end.text, end.speech_tokens, end.reason, end.steps)


@pytest.fixture(scope="module")
def solo(trained) -> dict:
    """Each reply alone, one at a time (the short one followed by FOLLOW_UP in its conversation)."""
    results, steps = [], []
    follow = None
    for i, message in enumerate(MESSAGES):
        d = Driver(trained, max_batch=1)
        try:
            job = d.submit(message)
            d.run()
            results.append(outcome(d.got[job.id]))
            steps.append(d.sched.steps)
            if i == SHORT:
                nxt = d.submit(FOLLOW_UP, conv=job.conv)
                d.run()
                follow = outcome(d.got[nxt.id])
        finally:
            d.close()
    return {"results": results, "steps": steps, "follow_up": follow}


def test_sessions_submitted_together_share_one_turn_and_equal_each_alone(drive, solo):
    assert [r[0] for r in solo["results"]] == [text for text, _ in REPLIES]
    assert [r[1] for r in solo["results"]] == [speech for _, speech in REPLIES]  # every reply speaks
    assert solo["steps"] == STEPS
    d = drive()
    jobs = [d.submit(m) for m in MESSAGES]
    d.run()
    turn = jobs[0].turn
    assert all(j.turn is turn for j in jobs) and [j.row for j in jobs] == [0, 1, 2] and len(turn.rows) == 3
    assert d.sched.turns == 1
    assert d.sched.steps == max(solo["steps"]) < sum(solo["steps"])  # one forward per round for all three
    assert [outcome(d.got[j.id]) for j in jobs] == solo["results"]
    assert all(not j.conv.lock.locked() for j in jobs) and d.sched.active == 0


def test_a_short_reply_ends_first_and_its_conversation_goes_on_at_once(drive, solo):
    d = drive()
    jobs = [d.submit(m) for m in MESSAGES]
    short = jobs[SHORT]
    while short.id not in d.ended_at:
        d.round()
    assert d.ended_at[short.id] == solo["steps"][SHORT] == STEPS[SHORT]
    assert not jobs[0].finished and not jobs[2].finished and short.turn.batch_size == 2
    assert outcome(d.got[short.id]) == solo["results"][SHORT]
    assert not short.conv.lock.locked()
    follow = d.submit(FOLLOW_UP, conv=short.conv)  # the same conversation, while the batch still runs
    d.round()
    assert follow.turn is not short.turn and d.sched.turns == 2 and not jobs[0].finished
    d.run()
    assert outcome(d.got[follow.id]) == solo["follow_up"]
    assert [outcome(d.got[j.id]) for j in jobs] == solo["results"]
    assert d.ended_at[short.id] < d.ended_at[jobs[0].id] < d.ended_at[jobs[2].id]


def test_cancelling_one_job_cancels_only_its_row(drive, solo):
    d = drive()
    jobs = [d.submit(m) for m in MESSAGES]
    for _ in range(3):
        d.round()
    turn = jobs[0].turn
    steps = turn.rows[0].steps
    jobs[0].cancel(spoken_tokens=2)
    d.round()
    end = d.got[jobs[0].id][-1]
    assert isinstance(end, EndOfTurn) and end.reason == "cancelled" and d.ended_at[jobs[0].id] == 4
    assert turn.rows[0].steps == steps  # no step after the cancel
    assert not jobs[0].conv.lock.locked() and turn.batch_size == 2
    d.run()
    assert [outcome(d.got[j.id]) for j in jobs[1:]] == solo["results"][1:]


def test_an_error_in_a_batched_turn_fails_only_its_jobs(drive, solo):
    d = drive()
    broken = [d.submit(MESSAGES[0]), d.submit(MESSAGES[2])]
    other = d.submit(MESSAGES[SHORT], TurnOptions(mode="s2s", max_seconds=4, speech_sampling=SamplingConfig()))
    d.round()
    turn = broken[0].turn
    assert broken[1].turn is turn and other.turn is not turn  # different options: a turn of its own

    def boom():
        raise RuntimeError("device lost")

    turn.step = boom
    d.round()
    for job in broken:
        failed = d.got[job.id][-1]
        assert isinstance(failed, JobFailed) and failed.code == "internal_error" and "RuntimeError" in failed.message
        assert job.finished and not job.conv.lock.locked()
    assert not other.finished
    again = d.submit(FOLLOW_UP, conv=broken[0].conv)  # the server goes on; so does the failed conversation
    d.run()
    assert outcome(d.got[other.id]) == solo["results"][SHORT]
    assert outcome(d.got[again.id])[3][2] in ("eos", "max_duration")


def test_max_batch_1_gives_each_job_its_own_turn(drive, solo):
    d = drive(max_batch=1)
    jobs = [d.submit(m) for m in MESSAGES]
    d.run()
    assert len({id(j.turn) for j in jobs}) == 3 and all(len(j.turn.rows) == 1 and j.row == 0 for j in jobs)
    assert d.sched.turns == 3 and d.sched.steps == sum(solo["steps"])
    assert [outcome(d.got[j.id]) for j in jobs] == solo["results"]


def test_max_batch_caps_the_rows_of_a_turn(drive, solo):
    d = drive(max_batch=2)
    jobs = [d.submit(m) for m in MESSAGES]
    d.run()
    assert jobs[0].turn is jobs[1].turn and jobs[2].turn is not jobs[0].turn and d.sched.turns == 2
    assert [outcome(d.got[j.id]) for j in jobs] == solo["results"]
    with pytest.raises(ValueError, match="max_batch"):
        Scheduler(d.engine, max_batch=0)


def test_a_slow_reader_in_a_batch_holds_its_events_without_stalling_the_others(drive, solo):
    d = drive(slow_client_timeout=3600)
    slow = d.submit(MESSAGES[0], high_water=3)
    fast = d.submit(MESSAGES[2])
    d.paused.add(slow.id)
    for _ in range(6):
        d.round()
    assert slow.turn is fast.turn and fast.turn.rows[1].steps == 6  # the shared turn kept stepping
    assert slow._paused_since is not None and slow._held  # the slow job's events wait in its buffer
    d.loop.run_until_complete(asyncio.sleep(0))
    delivered = slow.queue.qsize()
    d.read(slow, 3)  # the reader catches up a little: what was held is released next round
    d.round()
    d.loop.run_until_complete(asyncio.sleep(0))
    assert slow.queue.qsize() > delivered - 3 and not slow._held
    d.paused.discard(slow.id)
    d.run()
    assert outcome(d.got[slow.id]) == solo["results"][0]  # nothing lost, nothing reordered
    assert outcome(d.got[fast.id]) == solo["results"][2]


def test_a_turn_pauses_when_all_its_readers_are_behind_and_slow_ones_time_out(drive, solo):
    d = drive(slow_client_timeout=3600)
    a, b = d.submit(MESSAGES[0], high_water=3), d.submit(MESSAGES[2], high_water=3)
    d.paused |= {a.id, b.id}
    for _ in range(8):
        d.round()
    turn = a.turn
    paused_at = turn.rows[0].steps
    assert b.turn is turn and paused_at < 8  # both readers behind: the turn stopped stepping
    d.round()
    assert turn.rows[0].steps == paused_at
    # one slow reader among fast ones is cancelled after the timeout; the others are untouched
    d2 = drive(slow_client_timeout=0.0)
    slow, fast = d2.submit(MESSAGES[0], high_water=3), d2.submit(MESSAGES[2])
    d2.paused.add(slow.id)
    d2.run()
    d2.read(slow)
    end = d2.got[slow.id][-1]
    assert isinstance(end, EndOfTurn) and end.reason == "cancelled" and end.steps < solo["steps"][0]
    assert outcome(d2.got[fast.id]) == solo["results"][2]
    for job in (a, b):
        job.cancel()
    d.run()
    assert all(isinstance(d.got[j.id][-1], EndOfTurn) for j in (a, b))
