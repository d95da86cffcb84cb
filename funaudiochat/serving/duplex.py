"""One ``/v1/duplex`` full-duplex session: microphone frames in, the duplex engine's events out.

The duplex model runs on a 5 Hz clock driven by the client's audio (docs/duplex.md), so nothing here
waits for a turn to end.  Threads and tasks:

- the socket's reader hands every audio frame to :meth:`DuplexSession.push_audio` at once (it only
  appends to a buffer, so the microphone never waits for the model);
- a :class:`DuplexRunner` thread computes the steps and calls :meth:`DuplexConnection._from_runner`,
  which moves each event onto the event loop;
- one writer task turns events into protocol frames and sends them, in order.

Events wait in one deque between the runner and the writer.  When a ``Stopped`` event (barge-in)
arrives there, audio of that turn still waiting is removed first, so a client that reads late never
receives speech the assistant already took back.  The model cannot pause for a slow reader (the
user's clock keeps running); a client that lets too many events pile up loses its session
(``slow_client``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import uuid
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from funaudiochat.duplex.engine import (
    STEP_SECONDS,
    ActionEvent,
    AudioChunk,
    ContextFullError,
    DuplexEngine,
    DuplexEvent,
    DuplexRunner,
    DuplexSession,
    SessionError,
    Stopped,
    TextDelta,
    TurnEnd,
    TurnStart,
)
from funaudiochat.duplex.model import has_duplex
from funaudiochat.generation import Engine, SamplingConfig
from funaudiochat.serving import protocol as P
from funaudiochat.serving.sessions import Frame, ServerState, created_fields

logger = logging.getLogger(__name__)

#: Close codes of a session that the server ends (docs/serving.md).
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_ERROR = 1000, 1008, 1011

_Item = DuplexEvent | list[Frame]


def duplex_engine_for(engine: Engine) -> tuple[DuplexEngine | None, str | None]:
    """The duplex engine for the served model, or None and the reason clients are told."""
    if not has_duplex(engine.model):
        return None, (
            "full duplex is not available: the served model has no duplex action head (it is a half-duplex "
            "checkpoint). Serve a duplex-trained checkpoint for /v1/duplex; turn-by-turn voice chat on "
            "/v1/realtime works as usual."
        )
    try:
        return DuplexEngine(engine.model, engine.processor, engine.detokenizer), None
    except ValueError as err:
        return None, f"full duplex is not available: {err}"


class DuplexConnection:
    """The server side of one ``/v1/duplex`` socket.

    The engine session (and its runner thread) starts with the first audio, so ``session.update``
    can still change the system prompt and sampling until then.
    """

    def __init__(self, state: ServerState, engine: DuplexEngine) -> None:
        self.state = state
        self.engine = engine
        self.id = "dplx_" + uuid.uuid4().hex[:16]
        settings = state.settings
        self.config = P.DuplexSessionConfig(max_turn_seconds=settings.default_output_seconds)
        self.session: DuplexSession | None = None
        self.runner: DuplexRunner | None = None
        self.loop = asyncio.get_running_loop()
        self.max_pending = 16 * settings.send_queue_frames
        #: Set once the session must end: (close code, reason); the writer closes after what is queued.
        self.end: tuple[int, str] | None = None
        #: Set when the writer cannot be trusted to close (a client that does not read).
        self.aborted = asyncio.Event()
        self.closed = False
        self._items: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._seq: dict[int, int] = {}  # audio frames sent per turn
        self._samples: dict[int, int] = {}  # audio samples sent per turn

    # ------------------------------------------------------------------ queueing
    def send(self, *frames: Frame) -> None:
        """Queue frames for the client, after the engine events already waiting."""
        if not self.closed:
            self._put(list(frames))

    def error(self, code: str, message: str, **fields: Any) -> None:
        self.state.counters["errors"] += 1
        self.send(P.error_event(code, message, **fields))

    def finish(self, code: int, reason: str) -> None:
        """End the session once the queued frames are written (the first reason wins)."""
        if self.end is None:
            self.end = (code, reason)
            self._wake.set()

    def _put(self, item: _Item) -> None:
        if self.end is not None and self.end[1] == "slow_client":
            return
        self._items.append(item)
        if len(self._items) > self.max_pending:
            self._items.clear()
            logger.warning("duplex session %s: client not reading (%d events waiting); ending it", self.id, self.max_pending)
            self.state.counters["errors"] += 1
            self._items.append([P.error_event(
                "slow_client", f"the client fell {self.max_pending} events behind; the model cannot wait, so the session ends")])
            self.finish(CLOSE_POLICY, "slow_client")
            self.aborted.set()
        self._wake.set()

    def _from_runner(self, event: DuplexEvent) -> None:
        """Runner thread: hand the event to the event loop (never blocks the model)."""
        try:
            self.loop.call_soon_threadsafe(self._accept, event)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody listens
            logger.debug("duplex session %s: event after the loop closed", self.id)

    def _accept(self, event: DuplexEvent) -> None:
        """Event loop: queue an engine event; a barge-in first drops the cut turn's waiting audio."""
        if self.closed or (isinstance(event, ActionEvent) and not self.config.actions):
            return
        if isinstance(event, Stopped):
            kept = [i for i in self._items if not (isinstance(i, AudioChunk) and i.turn == event.turn)]
            if len(kept) != len(self._items):
                logger.debug("duplex session %s: dropped %d unsent audio chunks of turn %d",
                             self.id, len(self._items) - len(kept), event.turn)
                self._items = collections.deque(kept)
        self._put(event)
        if isinstance(event, SessionError):
            if isinstance(event.error, ContextFullError):
                self.finish(CLOSE_NORMAL, "context_full")
            else:
                self.finish(CLOSE_ERROR, "internal_error")

    # ------------------------------------------------------------------ incoming frames
    def hello(self) -> None:
        self.state.counters["sessions_total"] += 1
        settings, engine = self.state.settings, self.engine
        self.send(P.event(
            "session.created",
            **created_fields(self.state, P.DUPLEX_PROTOCOL_VERSION, self.id, self.config.to_json()),
            step_ms=round(1000 * STEP_SECONDS),
            limits={"max_frame_bytes": settings.max_frame_bytes,
                    "max_turn_seconds": settings.max_output_seconds,
                    "max_session_seconds": round(min(engine.max_steps, engine.max_positions) * STEP_SECONDS, 1)},
        ))

    async def on_text(self, text: str) -> None:
        try:
            msg = P.parse_client_message(text, P.DUPLEX_CLIENT_TYPES)
            await self._dispatch(msg)
        except P.ProtocolError as err:
            self.error(err.code, str(err))

    async def on_bytes(self, data: bytes) -> None:
        try:
            await self._push(P.decode_pcm16(data))
        except P.ProtocolError as err:
            self.error(err.code, str(err))

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "ping":
            self.send(P.event("pong", id=msg.get("id")))
        elif kind == "input_audio.append":
            await self._push(P.decode_base64_pcm16(msg.get("audio")))
        elif kind == "interrupt":
            if self.session is not None:
                self.session.interrupt()
        elif kind == "session.update":
            if self.session is not None:
                raise P.ProtocolError(
                    "session_active", "session.update is accepted only before the first audio: the model's clock has "
                    "started with this prompt and these settings; open a new session to change them")
            self.config = P.apply_duplex_update(self.config, msg.get("session"), self.state.settings.max_output_seconds,
                                                self.state.voices)
            self.send(P.event("session.updated", session=self.config.to_json()))

    async def _push(self, audio: np.ndarray) -> None:
        if audio.size == 0 or self.end is not None:
            return
        if self.session is None:
            await self._start()
            if self.session is None:
                return
        try:
            self.session.push_audio(audio)
        except (ValueError, TypeError) as err:
            raise P.ProtocolError("invalid_audio", str(err)) from None
        except RuntimeError:  # closed under us while the socket goes away
            logger.debug("duplex session %s: audio after close", self.id)

    async def _start(self) -> None:
        """Create the engine session (its system prompt's cache may need a model pass) and its runner."""
        c = self.config
        options = dataclasses.replace(
            self.engine.options,
            action_temperature=c.action_temperature,
            min_start_prob=c.min_start_prob,
            max_turn_seconds=c.max_turn_seconds,
            text_sampling=SamplingConfig(**vars(c.text_sampling)),
            speech_sampling=SamplingConfig(**vars(c.speech_sampling)),
            voice=c.voice,
        )
        try:
            session = await asyncio.to_thread(self.engine.session, c.instructions, c.seed, options)
        except Exception as err:  # noqa: BLE001 - reported to the client, the server keeps running
            logger.exception("duplex session %s could not start", self.id)
            self.error("internal_error", f"the duplex session could not start ({type(err).__name__})")
            self.finish(CLOSE_ERROR, "internal_error")
            return
        if self.closed:
            session.close()
            return
        self.session = session
        self.runner = self.engine.runner(session, on_event=self._from_runner)
        logger.info("duplex session %s started (prompt %d positions)", self.id, session.positions)

    # ------------------------------------------------------------------ outgoing frames
    def _frames(self, item: _Item) -> list[Frame]:
        """The protocol frames of one queued item."""
        if isinstance(item, list):
            return item
        if isinstance(item, ActionEvent):
            if not self.config.actions:
                return []
            return [P.event("action", step=item.step, action=item.action, prob=round(item.prob, 4), forced=item.forced)]
        if isinstance(item, TurnStart):
            self._seq[item.turn] = self._samples[item.turn] = 0
            return [P.event("turn.started", step=item.step, turn=item.turn, kind=item.kind)]
        if isinstance(item, TextDelta):
            return [P.event("turn.text.delta", step=item.step, turn=item.turn, delta=item.text)]
        if isinstance(item, AudioChunk):
            frames: list[Frame] = []
            if item.tokens:
                frames.append(P.event("turn.speech_tokens", step=item.step, turn=item.turn, tokens=item.tokens))
            if item.samples is not None and len(item.samples):
                seq = self._seq.get(item.turn, 0)
                self._seq[item.turn] = seq + 1
                self._samples[item.turn] = self._samples.get(item.turn, 0) + len(item.samples)
                frames.append(P.event("turn.audio.delta", step=item.step, turn=item.turn, seq=seq,
                                      samples=len(item.samples), sample_rate=item.sample_rate))
                frames.append(P.encode_pcm16(item.samples))
            return frames
        if isinstance(item, Stopped):
            return [P.event("turn.stopped", step=item.step, turn=item.turn)]
        if isinstance(item, TurnEnd):
            self._seq.pop(item.turn, None)
            return [P.event("turn.done", step=item.step, turn=item.turn, text=item.text, interrupted=item.interrupted,
                            reason=item.reason, speech_tokens=len(item.speech_tokens),
                            audio_samples=self._samples.pop(item.turn, 0))]
        if isinstance(item, SessionError):
            self.state.counters["errors"] += 1
            if isinstance(item.error, ContextFullError):
                return [P.error_event("context_full", item.message, step=item.step)]
            kind = type(item.error).__name__ if item.error is not None else "error"  # details stay in the server log
            return [P.error_event("internal_error", f"the duplex model failed at step {item.step} ({kind}); "
                                  "the session ends", step=item.step)]
        raise TypeError(f"unexpected duplex event {item!r}")

    async def write(self, ws: WebSocket) -> None:
        """Send queued items in order; after :meth:`finish`, drain and close the socket."""
        try:
            while True:
                while not self._items:
                    if self.end is not None:
                        code, reason = self.end
                        await ws.close(code=code, reason=reason)
                        return
                    self._wake.clear()
                    await self._wake.wait()
                for frame in self._frames(self._items.popleft()):
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_text(frame)
        except (WebSocketDisconnect, RuntimeError, OSError) as err:
            logger.debug("duplex session %s: send failed (%s)", self.id, err)
        except Exception:  # a bug here must end the session visibly, not leave the client hanging
            logger.exception("duplex session %s: the writer failed", self.id)
            raise

    # ------------------------------------------------------------------ end
    async def close(self) -> None:
        """The socket is gone: stop the runner thread and free the session (off the event loop)."""
        self.closed = True
        self._items.clear()
        runner, session = self.runner, self.session
        if runner is None and session is None:
            return
        await asyncio.to_thread(_shutdown, runner, session)
        if session is not None:
            stats = session.stats()
            logger.info("duplex session %s closed after %d steps (%.1f s, rtf %.2f, %d late steps)",
                        self.id, stats.steps, stats.audio_seconds, stats.rtf, stats.late_steps)


def _shutdown(runner: DuplexRunner | None, session: DuplexSession | None) -> None:
    if runner is not None:
        runner.stop()
    if session is not None:
        session.close()


async def read(ws: WebSocket, conn: DuplexConnection) -> None:
    """The socket's reader: every frame goes to the connection as it arrives."""
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                await conn.on_bytes(msg["bytes"])
            elif msg.get("text") is not None:
                await conn.on_text(msg["text"])
    except (WebSocketDisconnect, RuntimeError) as err:  # RuntimeError: receive after the socket closed
        logger.debug("duplex session %s: %s", conn.id, err)
    except Exception:  # a bug here must end the session visibly
        logger.exception("duplex session %s: the reader failed", conn.id)
        raise


async def serve_connection(ws: WebSocket, conn: DuplexConnection) -> None:
    """Run the reader and the writer until the client leaves or the session ends, then clean up."""
    reader = asyncio.create_task(read(ws, conn))
    writer = asyncio.create_task(conn.write(ws))
    aborted = asyncio.create_task(conn.aborted.wait())
    try:
        await asyncio.wait({reader, writer, aborted}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, writer, aborted):
            task.cancel()
        failed = any(t.done() and not t.cancelled() and t.exception() is not None for t in (reader, writer))
        if conn.aborted.is_set() or failed:  # the writer did not close the socket itself
            code, reason = (CLOSE_POLICY, "slow_client") if conn.aborted.is_set() else (CLOSE_ERROR, "internal_error")
            try:
                await asyncio.wait_for(ws.close(code=code, reason=reason), timeout=2)
            except (asyncio.TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
                pass
        await conn.close()
