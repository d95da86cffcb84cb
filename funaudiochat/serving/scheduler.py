"""Runs every session's generation off the event loop, one backbone step at a time, round-robin.

One worker thread owns the model.  Each active reply (a :class:`Job`) is one row of a
:class:`Turn`; every round steps each running turn once, so N concurrent replies share the CPU/GPU
fairly and a long reply never blocks a short one for more than one step.

**Batching.**  Jobs that are waiting at the start of the same round and ask for equal
:class:`TurnOptions` (mode, sampling, length, voice, tools) start together as one multi-row turn,
up to ``max_batch`` rows (``max_batch=1``: one turn per job).  One step of that turn advances all of
its replies in a single forward, so N sessions cost less than N steps.  A reply that finishes leaves
the batch at once (:meth:`Turn.close_row`): its client gets the end of turn and its conversation is
free for the next turn while the others go on.  Jobs submitted while a batch runs start their own
turn in the next round; they never join a running one.

Events are handed to the job's asyncio queue with ``call_soon_threadsafe``.  A job whose consumer
has ``high_water`` undelivered events (a slow client) is not delivered to: a turn of its own is
paused (skipped), and a shared turn keeps stepping for the other rows while that job's events wait
in a buffer (``Job._held``); the turn pauses only when every one of its readers is behind.  A job
behind for longer than ``slow_client_timeout`` is cancelled, so one slow client never stalls the
others.  Cancelling (barge-in, disconnect) closes the job's row before the turn's next step, i.e.
within one backbone step, drops the events still held for it and leaves the other rows alone.  An exception in a turn fails the jobs
of that turn only (:class:`JobFailed`); the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from funaudiochat.generation import EndOfTurn, Engine, TurnOptions
from funaudiochat.generation.engine import Turn
from funaudiochat.generation.events import Event
from funaudiochat.generation.state import Conversation
from funaudiochat.processing import Message

logger = logging.getLogger(__name__)


@dataclass
class JobFailed:
    """Delivered instead of events when generation raised; ``message`` is safe to show a client."""

    code: str
    message: str


class Job:
    """One reply for one conversation, consumed as an async stream of events.

    While it runs it is row ``row`` of ``turn`` (a turn it may share with other jobs).
    """

    def __init__(
        self,
        conv: Conversation,
        messages: Sequence[Message],
        options: TurnOptions,
        loop: asyncio.AbstractEventLoop,
        high_water: int = 64,
    ) -> None:
        self.id = "resp_" + uuid.uuid4().hex[:16]
        self.conv = conv
        self.messages = list(messages)
        self.options = options
        self.loop = loop
        self.high_water = high_water
        self.queue: asyncio.Queue = asyncio.Queue()
        self.turn: Turn | None = None
        self.row = 0  # this job's row in ``turn``
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.prompt_tokens = 0
        self._held: list[Event] = []  # produced while the consumer was behind (shared turns only)
        self._lock = threading.Lock()
        self._outstanding = 0
        self._cancel = False
        self._spoken: int | None = None
        self._paused_since: float | None = None
        self.finished = False
        self.scheduler: Scheduler | None = None

    # ---------------------------------------------------------------- consumer side (event loop)
    def cancel(self, spoken_tokens: int | None = None) -> None:
        """Stop before the next step; ``spoken_tokens`` = speech tokens the user heard (history keeps those)."""
        with self._lock:
            if not self._cancel:
                self._cancel, self._spoken = True, spoken_tokens
        if self.scheduler is not None:
            self.scheduler.wake()

    @property
    def cancelled(self) -> bool:
        return self._cancel

    async def events(self) -> AsyncIterator[Event | JobFailed]:
        """Events in order; ends after :class:`EndOfTurn` or :class:`JobFailed`."""
        while True:
            item = await self.queue.get()
            with self._lock:
                self._outstanding -= 1
            if self.scheduler is not None:
                self.scheduler.wake()
            yield item
            if isinstance(item, (EndOfTurn, JobFailed)):
                return

    # ---------------------------------------------------------------- worker side
    def _emit(self, item: Event | JobFailed) -> None:
        with self._lock:
            self._outstanding += 1
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody listens
            self.cancel()

    def _backlogged(self) -> bool:
        with self._lock:
            return self._outstanding >= self.high_water

    def _release(self) -> None:
        """Hand every held event to the consumer (it has room again, or the reply is ending)."""
        held, self._held = self._held, []
        for event in held:
            self._emit(event)


class Scheduler:
    """Owns the generation thread; :meth:`submit` jobs from the event loop.

    ``steps`` counts :meth:`Turn.step` calls (one per running turn per round, whatever its number
    of rows) and ``turns`` the turns started, so ``jobs / turns`` is the batching achieved.
    """

    def __init__(self, engine: Engine, slow_client_timeout: float = 30.0, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.engine = engine
        self.slow_client_timeout = slow_client_timeout
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._active: list[Job] = []
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.turns = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="funaudiochat-generation", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything and join the thread (server shutdown)."""
        with self._cond:
            self._stop = True
            for job in [*self._pending, *self._active]:
                job.cancel()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job) -> Job:
        job.scheduler = self
        with self._cond:
            if self._stop:
                raise RuntimeError("the generation scheduler is stopped")
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @property
    def active(self) -> int:
        with self._cond:
            return len(self._active) + len(self._pending)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._pending and not self._runnable():
                    self._cond.wait(timeout=0.5 if self._active else None)
                    self._expire_slow()
                if self._stop and not self._pending and not self._active:
                    return
            self.run_once()
            if self._stop:
                self._drain()

    def _runnable(self) -> bool:
        """Some turn has a job to cancel or a reader with room (its turn then steps)."""
        return any(j.cancelled or not j._backlogged() for j in self._active)

    def _expire_slow(self) -> None:
        now = time.perf_counter()
        for job in self._active:
            if job._paused_since is not None and not job.cancelled and now - job._paused_since > self.slow_client_timeout:
                logger.warning("response %s: client too slow to read events for %.0f s; cancelling", job.id, self.slow_client_timeout)
                job.cancel()

    def _drain(self) -> None:
        for job in list(self._active):
            job.cancel()
        while self._active or self._pending:
            self.run_once()

    def run_once(self) -> None:
        """Start pending jobs (batched), then step every running turn once (the unit a test can drive)."""
        with self._cond:
            new, self._pending = self._pending, []
            # checked every round too: while other turns keep the worker busy it never waits
            self._expire_slow()
        waiting = []
        for job in new:
            job.started = time.perf_counter()
            if job.cancelled:
                job.finished = True
                job._emit(EndOfTurn(text="", speech_tokens=[], reason="cancelled", steps=0,
                                    timings={"queued_s": job.started - job.submitted}))
                continue
            waiting.append(job)
        for group in self._groups(waiting):
            started = self._start(group)
            with self._cond:
                self._active.extend(started)
        for turn, jobs in self._by_turn(list(self._active)):
            self._advance(turn, jobs)
        with self._cond:
            self._active = [j for j in self._active if not j.finished]

    # ---------------------------------------------------------------- starting
    def _groups(self, jobs: Sequence[Job]) -> list[list[Job]]:
        """Jobs that can share a turn: equal options, distinct free conversations, at most ``max_batch``."""
        groups: list[list[Job]] = []
        open_groups: list[list[Job]] = []
        for job in jobs:
            if self.max_batch == 1 or job.conv.lock.locked():  # a busy conversation fails on its own
                groups.append([job])
                continue
            for group in open_groups:
                if (len(group) < self.max_batch and group[0].options == job.options
                        and all(other.conv is not job.conv for other in group)):
                    group.append(job)
                    break
            else:
                groups.append([job])
                open_groups.append(groups[-1])
        return groups

    def _start(self, group: list[Job]) -> list[Job]:
        """Start one turn for the group; returns the jobs that are now running."""
        if len(group) == 1:
            return group if self._start_one(group[0]) else []
        before = [job.conv.positions for job in group]
        try:
            turn = self.engine.start_batch([j.conv for j in group], [j.messages for j in group], group[0].options)
        except Exception as err:  # noqa: BLE001 - one bad input must not fail the others: start them one by one
            logger.warning("%d responses could not start as one batch (%s: %s); starting them one by one",
                           len(group), type(err).__name__, err)
            return [job for job in group if self._start_one(job)]
        self.turns += 1
        for row, (job, n) in enumerate(zip(group, before)):
            job.turn, job.row = turn, row
            job.prompt_tokens = job.conv.positions - n
        logger.debug("started responses %s as one turn", ", ".join(j.id for j in group))
        return group

    def _start_one(self, job: Job) -> bool:
        try:
            before = job.conv.positions
            job.turn, job.row = self.engine.start(job.conv, job.messages, job.options), 0
            job.prompt_tokens = job.conv.positions - before
        except (ValueError, RuntimeError) as err:
            logger.warning("response %s could not start: %s", job.id, err)
            job.finished = True
            job._emit(JobFailed("invalid_input" if isinstance(err, ValueError) else "busy", str(err)))
            return False
        except Exception as err:  # noqa: BLE001 - reported to the client, the server keeps running
            logger.exception("response %s failed to start", job.id)
            job.finished = True
            job._emit(JobFailed("internal_error", f"generation failed: {type(err).__name__}"))
            return False
        self.turns += 1
        return True

    # ---------------------------------------------------------------- stepping
    @staticmethod
    def _by_turn(jobs: Sequence[Job]) -> list[tuple[Turn, list[Job]]]:
        """The running turns in order of their first job, each with its unfinished jobs."""
        turns: dict[int, tuple[Turn, list[Job]]] = {}
        for job in jobs:
            assert job.turn is not None
            turns.setdefault(id(job.turn), (job.turn, []))[1].append(job)
        return list(turns.values())

    def _advance(self, turn: Turn, jobs: list[Job]) -> None:
        """One round of one turn: apply cancels, step it unless every reader is behind, end finished rows."""
        try:
            for job in jobs:
                if job.cancelled:  # lands before the next step: the row leaves the turn now
                    with job._lock:
                        spoken = job._spoken
                    turn.cancel(job.row, spoken)
                    if job._held:
                        logger.debug("response %s: dropping %d undelivered events (cancelled)", job.id, len(job._held))
                        job._held = []
                    self._finish(turn, job)
            live = [j for j in jobs if not j.finished]
            if not live:
                return
            now = time.perf_counter()
            ready = []
            for job in live:
                if job._backlogged():
                    if job._paused_since is None:
                        job._paused_since = now
                else:
                    job._paused_since = None
                    ready.append(job)
            if not ready:
                return  # every reader of this turn is behind: pause it
            events = turn.step()
            self.steps += 1
            for job in live:
                job._held.extend(events[job.row])
            for job in live:
                if turn.rows[job.row].finished:
                    self._finish(turn, job)
                elif job in ready:
                    job._release()
        except Exception as err:  # noqa: BLE001 - one broken turn must not take the server down
            failed = [j for j in jobs if not j.finished]
            logger.exception("responses %s failed", ", ".join(j.id for j in failed))
            if not turn.closed:
                try:
                    turn.close()  # unfinished rows end as cancelled; the conversations stay usable
                except Exception:  # noqa: BLE001
                    logger.exception("responses %s: closing after a failure failed too", ", ".join(j.id for j in failed))
            for job in failed:  # after the close: a client told of the failure finds its conversation free
                job.finished = True
                job._held = []
                job._emit(JobFailed("internal_error", f"generation failed: {type(err).__name__}"))

    def _finish(self, turn: Turn, job: Job) -> None:
        """Close the job's row now and deliver everything it has left, ending with its EndOfTurn."""
        end = turn.close_row(job.row)
        end.timings["queued_s"] = (job.started or job.submitted) - job.submitted
        job._held.extend(turn.rows[job.row].tail)
        job._release()
        job.finished = True
        job._emit(end)
