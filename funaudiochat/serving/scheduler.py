"""Runs every session's generation off the event loop, one backbone step at a time, round-robin.

One worker thread owns the model.  Each active reply (a :class:`Job`) advances by one
:meth:`Turn.step` per round, so N concurrent replies share the CPU/GPU fairly and a long reply never
blocks a short one for more than one step.  Events are handed to the job's asyncio queue with
``call_soon_threadsafe``; a job whose consumer has ``high_water`` undelivered events (a slow client)
is skipped (paused) rather than waited on, so it cannot stall the others; paused longer than
``slow_client_timeout`` it is cancelled.  Cancelling (barge-in, disconnect) takes effect before the
job's next step, i.e. within one backbone step.
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
    """One reply for one conversation, consumed as an async stream of events."""

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
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.steps_after_cancel = 0
        self.prompt_tokens = 0
        self._lock = threading.Lock()
        self._outstanding = 0
        self._cancel = False
        self._spoken: int | None = None
        self._applied = False
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


class Scheduler:
    """Owns the generation thread; :meth:`submit` jobs from the event loop."""

    def __init__(self, engine: Engine, slow_client_timeout: float = 30.0) -> None:
        self.engine = engine
        self.slow_client_timeout = slow_client_timeout
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._active: list[Job] = []
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0

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
        return any(j.cancelled or not j._backlogged() for j in self._active)

    def _expire_slow(self) -> None:
        now = time.perf_counter()
        for job in self._active:
            if job._paused_since is not None and now - job._paused_since > self.slow_client_timeout:
                logger.warning("response %s: client too slow to read events for %.0f s; cancelling", job.id, self.slow_client_timeout)
                job.cancel()

    def _drain(self) -> None:
        for job in list(self._active):
            job.cancel()
        while self._active or self._pending:
            self.run_once()

    def run_once(self) -> None:
        """Start pending jobs, then give every runnable job one step (the unit a test can drive)."""
        with self._cond:
            new, self._pending = self._pending, []
        for job in new:
            job.started = time.perf_counter()
            if job.cancelled:
                job.finished = True
                job._emit(EndOfTurn(text="", speech_tokens=[], reason="cancelled", steps=0,
                                    timings={"queued_s": job.started - job.submitted}))
                continue
            try:
                before = job.conv.positions
                job.turn = self.engine.start(job.conv, job.messages, job.options)
                job.prompt_tokens = job.conv.positions - before
            except (ValueError, RuntimeError) as err:
                logger.warning("response %s could not start: %s", job.id, err)
                job.finished = True
                job._emit(JobFailed("invalid_input" if isinstance(err, ValueError) else "busy", str(err)))
                continue
            except Exception as err:  # noqa: BLE001 - reported to the client, the server keeps running
                logger.exception("response %s failed to start", job.id)
                job.finished = True
                job._emit(JobFailed("internal_error", f"generation failed: {type(err).__name__}"))
                continue
            with self._cond:
                self._active.append(job)
        for job in list(self._active):
            self._advance(job)
        with self._cond:
            self._active = [j for j in self._active if not j.finished]

    def _advance(self, job: Job) -> None:
        turn = job.turn
        assert turn is not None
        try:
            if job.cancelled and not job._applied:
                turn.cancel(0, job._spoken)
                job._applied = True
            if not job.cancelled and job._backlogged():
                if job._paused_since is None:
                    job._paused_since = time.perf_counter()
                return
            job._paused_since = None
            if not turn.done:
                events = turn.step()[0]
                self.steps += 1
                if job._applied:
                    job.steps_after_cancel += 1
                for e in events:
                    job._emit(e)
            if turn.done:
                end = turn.close()[0]
                end.timings["queued_s"] = (job.started or job.submitted) - job.submitted
                for e in turn.rows[0].tail:
                    job._emit(e)
                job.finished = True
                job._emit(end)
        except Exception as err:  # noqa: BLE001 - one broken reply must not take the server down
            logger.exception("response %s failed", job.id)
            job.finished = True
            if not turn.closed:
                try:
                    turn.cancel()
                    turn.close()
                except Exception:  # noqa: BLE001
                    logger.exception("response %s: closing after a failure failed too", job.id)
            job._emit(JobFailed("internal_error", f"generation failed: {type(err).__name__}"))
