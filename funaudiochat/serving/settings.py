"""Server limits and defaults, in one immutable object shared by every request handler."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSettings:
    """What the server allows; each limit has its own error (see ``docs/serving.md``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str = "funaudiochat"
    max_request_bytes: int = 16 * 1024 * 1024  # HTTP bodies (413 beyond)
    max_frame_bytes: int = 1024 * 1024  # one WebSocket frame (the connection closes with 1009 beyond)
    max_audio_seconds: float = 60.0  # one user utterance (400 / error event beyond)
    max_output_seconds: float = 60.0  # the longest reply a client may ask for
    default_output_seconds: float = 30.0
    max_sessions: int = 16  # concurrent WebSocket sessions (error + close 1013 beyond)
    max_duplex_sessions: int = 4  # of those, full-duplex ones: each computes a model step every 200 ms
    max_http_concurrency: int = 8  # concurrent chat completions (429 beyond)
    max_text_chars: int = 20000  # one text message
    send_queue_frames: int = 64  # per-session outgoing frames before the reply pauses
    slow_client_timeout: float = 30.0  # a reply paused this long for a slow reader is cancelled
    max_batch: int = 8  # replies started in the same round with equal options share one batched turn (1: never)
    vad_backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_frame_bytes", "max_sessions", "max_http_concurrency", "max_text_chars", "send_queue_frames",
                     "max_batch", "max_duplex_sessions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_audio_seconds", "max_output_seconds", "default_output_seconds", "slow_client_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.default_output_seconds > self.max_output_seconds:
            raise ValueError(
                f"default_output_seconds ({self.default_output_seconds}) exceeds max_output_seconds ({self.max_output_seconds})"
            )
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(
                f"refusing to serve on {self.host!r} without an API key: anyone on the network could use the model; "
                "pass --api-key KEY (or bind to 127.0.0.1)"
            )


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; anything else (0.0.0.0, a LAN address) is exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
