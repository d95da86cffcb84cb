"""One ``/v1/realtime`` voice session: its conversation, audio buffer, VAD and current reply.

Transport-agnostic: the server feeds it the client's frames (:meth:`RealtimeSession.on_text`,
:meth:`RealtimeSession.on_bytes`) and drains :attr:`RealtimeSession.outbox` into the socket.  The
outbox is bounded, so a client that reads slowly backs up only its own reply (the scheduler then
pauses that reply), never the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from funaudiochat.audio.io import AudioError, validate_waveform
from funaudiochat.generation import AudioChunk, EndOfTurn, SamplingConfig, SpeechTokens, TextDelta, TurnOptions
from funaudiochat.processing import Message
from funaudiochat.serving import protocol as P
from funaudiochat.serving.scheduler import Job, JobFailed, Scheduler
from funaudiochat.serving.settings import ServerSettings
from funaudiochat.serving.vad import TurnDetector, VadFactory

if TYPE_CHECKING:
    from funaudiochat.duplex.engine import DuplexEngine
    from funaudiochat.serving.duplex import DuplexConnection

logger = logging.getLogger(__name__)

SPEECH_TOKEN_RATE = 25  # speech tokens per second of reply audio
_PREROLL = P.INPUT_SAMPLE_RATE // 2  # keep 0.5 s before detected speech (the VAD decides late)

Frame = str | bytes


@dataclass
class ServerState:
    """What all sessions share: the engine's scheduler, the VAD model, limits and counters."""

    settings: ServerSettings
    scheduler: Scheduler
    vad: VadFactory
    voices: tuple[str, ...] | None
    output_sample_rate: int | None  # None: no detokenizer, replies carry speech tokens only
    asr: Any = None  # optional object with transcribe(np.ndarray) -> str
    sessions: int = 0
    live: dict[str, "RealtimeSession"] = field(default_factory=dict)  # open sessions by id (for inspection)
    duplex: DuplexEngine | None = None  # the engine of /v1/duplex; None when the model has no duplex head
    duplex_unavailable: str | None = None  # why /v1/duplex refuses sessions (shown to clients)
    duplex_sessions: int = 0
    duplex_live: dict[str, DuplexConnection] = field(default_factory=dict)  # open DuplexConnections by id (for inspection)
    http_requests: int = 0
    counters: dict[str, int] = field(default_factory=lambda: {"sessions_total": 0, "responses": 0, "errors": 0})

    def duplex_info(self) -> dict[str, Any]:
        """Whether ``/v1/duplex`` takes sessions, and why not (what the web page shows)."""
        return {"available": self.duplex is not None, "endpoint": "/v1/duplex", "reason": self.duplex_unavailable}


class RealtimeSession:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.id = "sess_" + uuid.uuid4().hex[:16]
        self.config = P.SessionConfig(max_output_seconds=state.settings.default_output_seconds)
        self.outbox: asyncio.Queue[list[Frame] | None] = asyncio.Queue(maxsize=state.settings.send_queue_frames)
        self.conv = self._new_conversation()
        self.chunks: list[np.ndarray] = []
        self.buffered = 0
        self.detector: TurnDetector | None = None
        self.job: Job | None = None
        self.task: asyncio.Task | None = None
        self.audio_sent_tokens = 0  # speech tokens of the current reply whose audio went out
        self.closed = False
        self._tasks: set[asyncio.Task] = set()
        self._reset_vad()

    # ------------------------------------------------------------------ helpers
    def _new_conversation(self):
        return self.state.scheduler.engine.conversation(system_prompt=self.config.instructions, seed=self.config.seed)

    def _reset_vad(self) -> None:
        self.detector = (
            self.state.vad.detector(self.config.vad_threshold, self.config.silence_ms)
            if self.config.turn_detection == "server_vad" else None
        )

    async def send(self, *frames: Frame) -> None:
        """Queue frames for the client (kept together); waits while the client is behind."""
        if not self.closed:
            await self.outbox.put(list(frames))

    async def error(self, code: str, message: str, **fields: Any) -> None:
        self.state.counters["errors"] += 1
        await self.send(P.error_event(code, message, **fields))

    async def start(self) -> None:
        self.state.counters["sessions_total"] += 1
        await self.send(P.event(
            "session.created",
            **created_fields(self.state, P.PROTOCOL_VERSION, self.id, self.config.to_json()),
            vad=self.state.vad.backend,
            duplex=self.state.duplex_info(),
            limits={"max_audio_seconds": self.state.settings.max_audio_seconds,
                    "max_output_seconds": self.state.settings.max_output_seconds,
                    "max_frame_bytes": self.state.settings.max_frame_bytes},
        ))

    # ------------------------------------------------------------------ incoming frames
    async def on_text(self, text: str) -> None:
        try:
            msg = P.parse_client_message(text)
            await self._dispatch(msg)
        except P.ProtocolError as err:
            await self.error(err.code, str(err))

    async def on_bytes(self, data: bytes) -> None:
        try:
            await self._append_audio(P.decode_pcm16(data))
        except P.ProtocolError as err:
            await self.error(err.code, str(err))

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "ping":
            await self.send(P.event("pong", id=msg.get("id")))
        elif kind == "session.update":
            await self._update(msg.get("session"))
        elif kind == "input_audio.append":
            await self._append_audio(P.decode_base64_pcm16(msg.get("audio")))
        elif kind == "input_audio.commit":
            await self._commit()
        elif kind == "input_audio.clear":
            self._clear_audio()
            await self.send(P.event("input_audio.cleared"))
        elif kind == "input_text":
            text = msg.get("text")
            if not isinstance(text, str) or not text.strip():
                raise P.ProtocolError("invalid_value", "input_text needs a non-empty string field 'text'")
            if len(text) > self.state.settings.max_text_chars:
                raise P.ProtocolError("text_too_long", f"text is {len(text)} characters; the limit is {self.state.settings.max_text_chars}")
            await self._respond(Message("user", text=text), started=time.perf_counter())
        elif kind == "response.cancel":
            played = msg.get("audio_played_ms")
            if played is not None:
                played = P._number(played, "audio_played_ms", 0, 1e9)
            await self._cancel(None if played is None else int(played * SPEECH_TOKEN_RATE / 1000), reason="client")

    async def _update(self, update: Any) -> None:
        new = P.apply_session_update(self.config, update, self.state.settings.max_output_seconds, self.state.voices)
        reset_conv = (new.instructions, new.seed) != (self.config.instructions, self.config.seed)
        if reset_conv and self.job is not None:
            raise P.ProtocolError("response_active", "cannot change instructions or seed while a reply is in progress; cancel it first")
        vad_changed = (new.turn_detection, new.silence_ms, new.vad_threshold) != (
            self.config.turn_detection, self.config.silence_ms, self.config.vad_threshold)
        self.config = new
        if reset_conv:
            self.conv = self._new_conversation()
        if vad_changed:
            self._clear_audio()
            self._reset_vad()
        await self.send(P.event("session.updated", session=self.config.to_json(), conversation_reset=reset_conv))

    # ------------------------------------------------------------------ audio in
    def _clear_audio(self) -> None:
        self.chunks, self.buffered = [], 0
        if self.detector is not None:
            self.detector.reset()

    async def _append_audio(self, audio: np.ndarray) -> None:
        if audio.size == 0:
            return
        self.chunks.append(audio)
        self.buffered += audio.size
        limit = self.state.settings.max_audio_seconds
        speaking = self.detector is not None and self.detector.speaking
        if self.detector is None or speaking:
            if self.buffered > limit * P.INPUT_SAMPLE_RATE:
                seconds = self.buffered / P.INPUT_SAMPLE_RATE
                self._clear_audio()
                raise P.ProtocolError("audio_too_long", f"the user turn is {seconds:.1f} s long, over the limit of {limit:g} s; "
                                      "the buffered audio was discarded (commit sooner, or split the utterance)")
        if self.detector is None:
            return
        for ev in self.detector.push(audio):
            if ev.kind == "speech_started":
                await self.send(P.event("input_audio.speech_started", audio_start_ms=ev.sample * 1000 // P.INPUT_SAMPLE_RATE))
                if self.job is not None:
                    await self._cancel(self.audio_sent_tokens, reason="barge_in")
            else:
                await self.send(P.event("input_audio.speech_stopped", audio_end_ms=ev.sample * 1000 // P.INPUT_SAMPLE_RATE))
                await self._commit()
        if not self.detector.speaking and self.buffered > _PREROLL:
            whole = np.concatenate(self.chunks)[-_PREROLL:]
            self.chunks, self.buffered = [whole], whole.size

    async def _commit(self) -> None:
        started = time.perf_counter()
        if not self.buffered:
            raise P.ProtocolError("empty_audio", "input_audio.commit with no buffered audio")
        audio = np.concatenate(self.chunks)
        self.chunks, self.buffered = [], 0
        try:
            audio = validate_waveform(audio, P.INPUT_SAMPLE_RATE, max_seconds=self.state.settings.max_audio_seconds, name="user turn")
        except AudioError as err:
            raise P.ProtocolError("invalid_audio", str(err)) from None
        item = "item_" + uuid.uuid4().hex[:12]
        await self.send(P.event("input_audio.committed", item_id=item, duration_ms=int(audio.size * 1000 / P.INPUT_SAMPLE_RATE),
                                transcript=None if self.state.asr else "[speech]"))
        if self.state.asr is not None:
            self._spawn(self._transcribe(item, audio))
        await self._respond(Message("user", audio=audio), started=started)

    async def _transcribe(self, item: str, audio: np.ndarray) -> None:
        try:
            text = await asyncio.to_thread(self.state.asr.transcribe, audio)
        except Exception as err:  # noqa: BLE001 - a transcript is a nicety; the reply goes on
            logger.warning("ASR failed: %s", err)
            text = "[speech]"
        await self.send(P.event("input_audio.transcript", item_id=item, transcript=text))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ replies
    def _options(self) -> TurnOptions:
        c = self.config
        return TurnOptions(
            mode=c.mode,
            text_sampling=SamplingConfig(**vars(c.text_sampling)),
            speech_sampling=SamplingConfig(**vars(c.speech_sampling)),
            max_seconds=c.max_output_seconds,
            voice=c.voice,
        )

    async def _cancel(self, spoken_tokens: int | None, reason: str) -> None:
        if self.job is None:
            if reason == "client":
                await self.error("no_active_response", "response.cancel: no reply is in progress")
            return
        logger.info("session %s: cancelling %s (%s, %s speech tokens heard)", self.id, self.job.id, reason, spoken_tokens)
        self.job.cancel(spoken_tokens)

    async def _respond(self, message: Message, started: float) -> None:
        if self.task is not None:  # a new user turn interrupts the reply in progress
            if self.job is not None:
                self.job.cancel(self.audio_sent_tokens)
            await asyncio.shield(self.task)
        job = Job(self.conv, [message], self._options(), asyncio.get_running_loop(), high_water=self.state.settings.send_queue_frames)
        self.job = job
        self.audio_sent_tokens = 0
        try:
            self.state.scheduler.submit(job)
        except RuntimeError as err:
            self.job = None
            raise P.ProtocolError("unavailable", str(err)) from None
        self.state.counters["responses"] += 1
        await self.send(P.event("response.created", response_id=job.id, mode=self.config.mode))
        self.task = asyncio.create_task(self._forward(job, started))

    async def _forward(self, job: Job, started: float) -> None:
        """Turn the job's events into protocol frames, in order."""
        first: dict[str, float] = {}
        samples = 0
        seq = 0
        try:
            async for item in job.events():
                now = time.perf_counter()
                if isinstance(item, TextDelta):
                    first.setdefault("first_text_ms", 1000 * (now - started))
                    await self.send(P.event("response.text.delta", response_id=job.id, delta=item.text))
                elif isinstance(item, SpeechTokens):
                    await self.send(P.event("response.speech_tokens", response_id=job.id, tokens=item.tokens))
                    if self.state.output_sample_rate is None:
                        self.audio_sent_tokens += len(item.tokens)
                elif isinstance(item, AudioChunk):
                    first.setdefault("first_audio_ms", 1000 * (now - started))
                    samples += len(item.audio)
                    header = P.event("response.audio.delta", response_id=job.id, seq=seq, samples=len(item.audio),
                                     sample_rate=item.sample_rate)
                    seq += 1
                    await self.send(header, P.encode_pcm16(item.audio))
                    self.audio_sent_tokens = int(samples * SPEECH_TOKEN_RATE / item.sample_rate)
                elif isinstance(item, EndOfTurn):
                    await self.send(P.event(
                        "response.done",
                        response_id=job.id,
                        text=item.text,
                        reason=item.reason,
                        steps=item.steps,
                        speech_tokens=len(item.speech_tokens),
                        audio_samples=samples,
                        latency_ms={k: round(v, 1) for k, v in first.items()},
                        timings_ms={k: round(1000 * v, 1) for k, v in item.timings.items()},
                    ))
                elif isinstance(item, JobFailed):
                    await self.error(item.code, item.message, response_id=job.id)
        finally:
            if self.job is job:
                self.job = None

    # ------------------------------------------------------------------ end
    async def close(self) -> None:
        """The client is gone: cancel its reply (freeing the model) and drop queued frames."""
        self.closed = True
        while not self.outbox.empty():
            self.outbox.get_nowait()
        if self.job is not None:
            self.job.cancel(self.audio_sent_tokens)
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=30)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                logger.warning("session %s: reply did not stop cleanly", self.id)
        for task in list(self._tasks):
            task.cancel()


def created_fields(state: ServerState, protocol: str, session_id: str, session: dict[str, Any]) -> dict[str, Any]:
    """The ``session.created`` fields that the half- and full-duplex endpoints share."""
    return {
        "protocol": protocol,
        "session_id": session_id,
        "session": session,
        "input_sample_rate": P.INPUT_SAMPLE_RATE,
        "output_sample_rate": state.output_sample_rate,
        "audio_output": state.output_sample_rate is not None,
        "voices": list(state.voices) if state.voices is not None else None,
    }
