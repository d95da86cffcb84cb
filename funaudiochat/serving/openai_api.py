"""OpenAI-compatible HTTP API: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Each request is stateless, as in OpenAI's API: the whole message list becomes one new conversation,
decoded through the same scheduler as the voice sessions.  Audio enters as ``input_audio`` content
parts (base64 wav/flac/ogg, or mp3 with ffmpeg) and leaves as ``message.audio.data`` (base64 wav) or,
when streaming, as ``delta.audio.data`` chunks of base64 PCM16.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import numpy as np
import soundfile as sf
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from funaudiochat.audio.io import AudioError, load_audio
from funaudiochat.generation import AudioChunk, EndOfTurn, SamplingConfig, TextDelta, TurnOptions
from funaudiochat.generation.engine import SECONDS_PER_STEP
from funaudiochat.generation.tools import tool_result_message
from funaudiochat.processing import Message
from funaudiochat.prompts import function_calling_prompt, system_prompt
from funaudiochat.serving.protocol import encode_pcm16, greedy_floor
from funaudiochat.serving.scheduler import Job, JobFailed
from funaudiochat.serving.sessions import ServerState

logger = logging.getLogger(__name__)


class APIError(HTTPException):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "code", "param"}}``."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(status_code=status, detail=message)
        self.code, self.param = code, param

    def body(self) -> dict[str, Any]:
        kind = {400: "invalid_request_error", 401: "authentication_error", 413: "invalid_request_error",
                429: "rate_limit_error"}.get(self.status_code, "server_error")
        return {"error": {"message": self.detail, "type": kind, "code": self.code, "param": self.param}}


def error_response(status: int, code: str, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(APIError(status, code, message, param).body(), status_code=status)


# ---------------------------------------------------------------------------------------- schema
class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use


class InputAudio(_Lenient):
    data: str = Field(description="base64-encoded audio file")
    format: Literal["wav", "mp3", "flac", "ogg"] = "wav"


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class AudioPart(_Lenient):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | AudioPart, Field(discriminator="type")]


class FunctionCall(_Lenient):
    name: str
    arguments: str = "{}"


class ToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Lenient):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class AudioOutput(_Lenient):
    voice: str | None = None
    format: Literal["wav", "pcm16"] = "wav"


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="only 1 is supported")
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------- input
def _text_of(content: str | list | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(p.text for p in content if isinstance(p, TextPart))


def _audio_of(content: str | list | None, index: int, state: ServerState) -> np.ndarray | None:
    if not isinstance(content, list):
        return None
    waves = []
    for j, part in enumerate(content):
        if not isinstance(part, AudioPart):
            continue
        where = f"messages[{index}].content[{j}].input_audio"
        try:
            raw = base64.b64decode(part.input_audio.data, validate=True)
        except (binascii.Error, ValueError) as err:
            raise APIError(400, "invalid_audio", f"{where}.data is not valid base64 ({err})", f"{where}.data") from None
        try:
            waves.append(load_audio(raw, max_seconds=state.settings.max_audio_seconds, name=where))
        except AudioError as err:
            raise APIError(400, "invalid_audio", str(err), f"{where}.data") from None
    if not waves:
        return None
    audio = np.concatenate(waves)
    if audio.size > state.settings.max_audio_seconds * 16000:
        raise APIError(400, "invalid_audio", f"messages[{index}]: audio parts total {audio.size / 16000:.1f} s, over the "
                       f"limit of {state.settings.max_audio_seconds:g} s", f"messages[{index}].content")
    return audio


def _tool_call_text(call: ToolCall) -> str:
    try:
        args = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        args = call.function.arguments
    return "<tool_call>\n" + json.dumps({"name": call.function.name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"


def to_messages(req: ChatCompletionRequest, mode: str, state: ServerState) -> list[Message]:
    """OpenAI messages -> our :class:`Message` list (the tool list goes into the system prompt)."""
    limit = state.settings.max_text_chars
    out: list[Message] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(req.messages):
        text = _text_of(m.content)
        if len(text) > limit:
            raise APIError(400, "text_too_long", f"messages[{i}] has {len(text)} characters; the limit is {limit}", f"messages[{i}].content")
        if m.role in ("system", "developer"):
            if text:
                out.append(Message("system", text))
        elif m.role == "user":
            audio = _audio_of(m.content, i, state)
            if audio is None and not text.strip():
                raise APIError(400, "empty_message", f"messages[{i}] (user) has neither text nor input_audio", f"messages[{i}].content")
            out.append(Message("user", text=text or None, audio=audio))
        elif m.role == "assistant":
            parts = [text] if text else []
            for call in m.tool_calls or []:
                call_names[call.id] = call.function.name
                parts.append(_tool_call_text(call))
            if parts:
                out.append(Message("assistant", "\n".join(parts), train=False))
        else:  # tool
            name = call_names.get(m.tool_call_id or "", m.name or "tool")
            out.append(tool_result_message(name, text))
    if not out or out[-1].role not in ("user", "tool"):
        raise APIError(400, "invalid_messages", "the last message must be a user or tool message", "messages")
    tools = _tools(req)
    if tools:
        systems = [m for m in out if m.role == "system"]
        base = "\n\n".join(m.text or "" for m in systems) or system_prompt(mode)
        out = [Message("system", function_calling_prompt(tools, base=base)), *(m for m in out if m.role != "system")]
    return out


def _tools(req: ChatCompletionRequest) -> tuple[dict, ...]:
    if not req.tools or req.tool_choice == "none":
        return ()
    return tuple({"type": "function", "function": t.function.model_dump(exclude_none=True)} for t in req.tools)


def to_options(req: ChatCompletionRequest, state: ServerState) -> TurnOptions:
    s = state.settings
    speak = bool(req.modalities and "audio" in req.modalities)
    limit = req.max_completion_tokens or req.max_tokens
    seconds = s.default_output_seconds if limit is None else min(s.max_output_seconds, limit * SECONDS_PER_STEP)
    voice = req.audio.voice if req.audio else None
    if voice and state.voices is not None and voice not in state.voices:
        raise APIError(400, "invalid_value", f"audio.voice {voice!r} is not one of {list(state.voices)}", "audio.voice")
    text = SamplingConfig(temperature=greedy_floor(req.temperature or 0.0), top_p=max(req.top_p or 1.0, 1e-6))  # a denormal top_p is 0 in float32
    return TurnOptions(mode="s2s" if speak else "s2t", text_sampling=text, max_seconds=max(seconds, SECONDS_PER_STEP),
                       tools=_tools(req) or None, voice=voice or None)


# ---------------------------------------------------------------------------------------- output
def openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our parsed ``{"name", "arguments"}`` calls in OpenAI's shape (arguments as a JSON string)."""
    return [
        {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
         "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}), ensure_ascii=False)}}
        for c in calls
    ]


def finish_reason(end: EndOfTurn) -> str:
    if end.tool_calls:
        return "tool_calls"
    return "length" if end.reason == "max_duration" else "stop"


def wav_base64(audio: np.ndarray, sample_rate: int) -> str:
    buf = io.BytesIO()  # the same PCM16 rounding as the streamed chunks, so both carry identical samples
    sf.write(buf, np.frombuffer(encode_pcm16(audio), dtype="<i2"), sample_rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def completion_body(end: EndOfTurn, audio: np.ndarray | None, sample_rate: int | None, audio_format: str,
                    model: str, prompt_tokens: int, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A ``chat.completion`` object for a finished reply."""
    calls = openai_tool_calls(end.tool_calls) if tool_calls is None else tool_calls
    message: dict[str, Any] = {"role": "assistant", "content": end.text, "refusal": None, "audio": None}
    if audio is not None and sample_rate is not None and audio.size:
        data = wav_base64(audio, sample_rate) if audio_format == "wav" else base64.b64encode(encode_pcm16(audio)).decode()
        message["audio"] = {"id": "audio_" + uuid.uuid4().hex[:16], "data": data, "expires_at": int(time.time()) + 3600,
                            "transcript": end.text}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(end), "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": end.steps, "total_tokens": prompt_tokens + end.steps},
    }


# ---------------------------------------------------------------------------------------- routes
def build_router(state: ServerState) -> APIRouter:
    router = APIRouter()
    model_name = state.settings.model_name

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "funaudiochat"}]}

    @router.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != model_name:
            raise APIError(404, "model_not_found", f"model {model_id!r} does not exist; this server serves {model_name!r}", "model")
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "funaudiochat"}

    @router.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        if req.model is not None and req.model != model_name:
            raise APIError(404, "model_not_found", f"model {req.model!r} does not exist; this server serves {model_name!r}", "model")
        options = to_options(req, state)
        messages = await asyncio.to_thread(to_messages, req, options.mode, state)  # audio decoding is CPU work
        if state.http_requests >= state.settings.max_http_concurrency:
            raise APIError(429, "too_many_requests", f"{state.http_requests} completions are running (limit "
                           f"{state.settings.max_http_concurrency}); retry shortly")
        state.http_requests += 1
        conv = state.scheduler.engine.conversation(seed=req.seed if req.seed is not None else 0)
        job = Job(conv, messages, options, asyncio.get_running_loop(), high_water=state.settings.send_queue_frames)
        try:
            state.scheduler.submit(job)
        except RuntimeError as err:
            state.http_requests -= 1
            raise APIError(503, "unavailable", str(err)) from None
        fmt = req.audio.format if req.audio else "wav"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(job, state, model_name, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            chunks, sr, end = [], None, None
            async for item in job.events():
                if isinstance(item, AudioChunk):
                    chunks.append(item.audio)
                    sr = item.sample_rate
                elif isinstance(item, EndOfTurn):
                    end = item
                elif isinstance(item, JobFailed):
                    raise APIError(400 if item.code == "invalid_input" else 500, item.code, item.message)
        finally:
            job.cancel()  # a no-op after the end; frees the model if the client went away
            state.http_requests -= 1
        audio = np.concatenate(chunks) if chunks else None
        return completion_body(end, audio, sr, fmt, model_name, job.prompt_tokens)

    return router


def _sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _stream(job: Job, state: ServerState, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` server-sent events; a client that disconnects cancels the reply."""
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    audio_id = "audio_" + uuid.uuid4().hex[:16]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for item in job.events():
            if isinstance(item, TextDelta):
                yield chunk({"content": item.text})
            elif isinstance(item, AudioChunk):
                data = base64.b64encode(encode_pcm16(item.audio)).decode()
                yield chunk({"audio": {"id": audio_id, "data": data, "format": "pcm16", "sample_rate": item.sample_rate}})
            elif isinstance(item, JobFailed):
                yield _sse({"error": {"message": item.message, "type": "server_error", "code": item.code}})
                break
            elif isinstance(item, EndOfTurn):
                calls = openai_tool_calls(item.tool_calls)
                if calls:
                    yield chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
                yield chunk({}, finish_reason(item))
                if include_usage:
                    yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                                "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": item.steps,
                                          "total_tokens": job.prompt_tokens + item.steps}})
        yield b"data: [DONE]\n\n"
    finally:
        job.cancel()
        state.http_requests -= 1
