"""The ``funaudiochat serve`` application: voice WebSockets, OpenAI-compatible HTTP and the web page.

:func:`create_app` builds the FastAPI app around an :class:`~funaudiochat.generation.Engine` (and,
when its model has a duplex head, a :class:`~funaudiochat.duplex.engine.DuplexEngine` for ``/v1/duplex``);
:func:`serve` runs it with uvicorn; :class:`BackgroundServer` runs it in a thread on a free loopback
port (tests, benchmarks, notebooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message as ASGIMessage, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from funaudiochat.duplex.engine import DuplexEngine
from funaudiochat.generation import Engine
from funaudiochat.serving import protocol as P
from funaudiochat.serving.duplex import DuplexConnection, duplex_engine_for, serve_connection
from funaudiochat.serving.openai_api import APIError, build_router, error_response
from funaudiochat.serving.scheduler import Scheduler
from funaudiochat.serving.sessions import RealtimeSession, ServerState
from funaudiochat.serving.settings import ServerSettings
from funaudiochat.serving.vad import VadFactory

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
_PUBLIC = ("/", "/healthz", "/favicon.ico")
_BAD_KEY = "missing or wrong API key (use ?api_key=KEY or an Authorization header)"


class BodyLimit:
    """Answers 413 for HTTP bodies over ``limit`` bytes, before any handler buffers them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.limit
        body: list[ASGIMessage] = []
        if not too_big:
            size = 0
            while True:
                msg = await receive()
                body.append(msg)
                size += len(msg.get("body", b""))
                if size > self.limit:
                    too_big = True
                    break
                if msg["type"] != "http.request" or not msg.get("more_body"):
                    break
        if too_big:
            response = error_response(413, "request_too_large", f"the request body exceeds the limit of {self.limit} bytes")
            await response(scope, receive, send)
            return
        replay = iter(body)

        async def replayed() -> ASGIMessage:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replayed, send)


def _key_ok(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _bearer(headers) -> str | None:
    value = headers.get("authorization", "")
    return value[7:].strip() if value.lower().startswith("bearer ") else None


def create_app(engine: Engine, settings: ServerSettings | None = None, asr: Any = None,
               duplex: DuplexEngine | None = None) -> FastAPI:
    """The whole server around one engine (its detokenizer, if any, gives the audio output).

    Full duplex (``/v1/duplex``) is served by ``duplex`` when given, else by a duplex engine on the
    same model when that model has a duplex head; otherwise ``/v1/duplex`` refuses sessions.
    """
    settings = settings or ServerSettings()
    detok = engine.detokenizer
    voices = tuple(detok.voices) if detok is not None and hasattr(detok, "voices") else None
    duplex_reason = None
    if duplex is None:
        duplex, duplex_reason = duplex_engine_for(engine)
    state = ServerState(
        settings=settings,
        scheduler=Scheduler(engine, slow_client_timeout=settings.slow_client_timeout, max_batch=settings.max_batch),
        vad=VadFactory(settings.vad_backend),
        voices=voices or None,
        output_sample_rate=int(detok.sample_rate) if detok is not None else None,
        asr=asr,
        duplex=duplex,
        duplex_unavailable=duplex_reason,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.scheduler.start()
        logger.info("serving %s on %s:%d (audio output: %s, VAD: %s, full duplex: %s)", settings.model_name, settings.host,
                    settings.port, state.output_sample_rate is not None, state.vad.backend, state.duplex is not None)
        yield
        await asyncio.to_thread(state.scheduler.stop)

    app = FastAPI(title="Fun-Audio-Chat server", version=P.PROTOCOL_VERSION, lifespan=lifespan,
                  description="Voice chat over WebSocket (/v1/realtime turn by turn, /v1/duplex full duplex; see "
                              "docs/serving.md) and an OpenAI-compatible API.")
    app.state.serving = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(400, "invalid_request", f"{where or 'body'}: {first.get('msg', 'invalid request')}", where or None)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__})")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if settings.api_key and request.url.path not in _PUBLIC and not request.url.path.startswith("/static/"):
            if not _key_ok(_bearer(request.headers), settings.api_key):
                return error_response(401, "invalid_api_key", "missing or wrong API key (send 'Authorization: Bearer KEY')")
        return await call_next(request)

    app.include_router(build_router(state))
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "protocol": P.PROTOCOL_VERSION, "sessions": state.sessions, "http_requests": state.http_requests,
                "active_replies": state.scheduler.active, "audio_output": state.output_sample_rate is not None,
                "vad": state.vad.backend, "duplex": state.duplex_info(), "duplex_sessions": state.duplex_sessions,
                **state.counters}

    async def refuse(ws: WebSocket, code: str, message: str, close_code: int) -> None:
        await ws.send_text(P.error_event(code, message))
        await ws.close(code=close_code)

    def authorised(ws: WebSocket) -> bool:
        key = settings.api_key
        return not key or _key_ok(ws.query_params.get("api_key"), key) or _key_ok(_bearer(ws.headers), key)

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket) -> None:
        await ws.accept()
        if not authorised(ws):
            await refuse(ws, "invalid_api_key", _BAD_KEY, 1008)
            return
        if state.sessions >= settings.max_sessions:
            await refuse(ws, "too_many_sessions", f"{state.sessions} sessions are open (limit {settings.max_sessions}); "
                         "retry later", 1013)
            return
        state.sessions += 1
        session = RealtimeSession(state)
        state.live[session.id] = session
        writer = asyncio.create_task(_write(ws, session))
        try:
            await session.start()
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if msg.get("bytes") is not None:
                    await session.on_bytes(msg["bytes"])
                elif msg.get("text") is not None:
                    await session.on_text(msg["text"])
        except (WebSocketDisconnect, RuntimeError) as err:  # RuntimeError: receive after the socket closed
            logger.debug("session %s: %s", session.id, err)
        finally:
            await session.close()
            writer.cancel()
            state.sessions -= 1
            state.live.pop(session.id, None)
            logger.info("session %s closed", session.id)

    @app.websocket("/v1/duplex")
    async def duplex_socket(ws: WebSocket) -> None:
        await ws.accept()
        if not authorised(ws):
            await refuse(ws, "invalid_api_key", _BAD_KEY, 1008)
            return
        if state.duplex is None:
            await refuse(ws, "duplex_unavailable", state.duplex_unavailable or "full duplex is not available", 1008)
            return
        if state.sessions >= settings.max_sessions:
            await refuse(ws, "too_many_sessions", f"{state.sessions} sessions are open (limit {settings.max_sessions}); "
                         "retry later", 1013)
            return
        if state.duplex_sessions >= settings.max_duplex_sessions:
            await refuse(ws, "too_many_sessions", f"{state.duplex_sessions} full-duplex sessions are open (limit "
                         f"{settings.max_duplex_sessions}); retry later", 1013)
            return
        state.sessions += 1
        state.duplex_sessions += 1
        conn = DuplexConnection(state, state.duplex)
        state.duplex_live[conn.id] = conn
        try:
            conn.hello()
            await serve_connection(ws, conn)
        finally:
            state.sessions -= 1
            state.duplex_sessions -= 1
            state.duplex_live.pop(conn.id, None)
            logger.info("duplex session %s closed", conn.id)

    return app


async def _write(ws: WebSocket, session: RealtimeSession) -> None:
    """Drains one session's bounded outbox into its socket (only this session waits on a slow client)."""
    try:
        while True:
            frames = await session.outbox.get()
            for frame in frames or ():
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_text(frame)
    except (WebSocketDisconnect, RuntimeError, OSError) as err:
        logger.debug("session %s: send failed (%s)", session.id, err)
    except asyncio.CancelledError:
        pass


def uvicorn_config(app: FastAPI, settings: ServerSettings, **kwargs: Any):
    import uvicorn

    return uvicorn.Config(app, host=settings.host, port=settings.port, ws_max_size=settings.max_frame_bytes,
                          ws="websockets-sansio", log_level=kwargs.pop("log_level", "info"), **kwargs)


def serve(engine: Engine, settings: ServerSettings, asr: Any = None) -> None:
    """Run the server until interrupted."""
    import uvicorn

    uvicorn.Server(uvicorn_config(create_app(engine, settings, asr), settings)).run()


class BackgroundServer:
    """The app on a free 127.0.0.1 port in a daemon thread; a context manager that stops it on exit."""

    def __init__(self, engine: Engine, settings: ServerSettings | None = None, asr: Any = None,
                 duplex: DuplexEngine | None = None) -> None:
        import uvicorn

        settings = settings or ServerSettings()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.app = create_app(engine, settings, asr, duplex)
        self.server = uvicorn.Server(uvicorn_config(self.app, settings, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    @property
    def duplex_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/duplex"

    @property
    def state(self) -> ServerState:
        return self.app.state.serving

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
