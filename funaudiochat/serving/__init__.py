"""Serving: a streaming voice WebSocket, an OpenAI-compatible HTTP API and a web page (``funaudiochat serve``).

Import :mod:`funaudiochat.serving.server` for :func:`create_app`, :func:`serve` and
:class:`BackgroundServer`; the wire protocol lives in :mod:`funaudiochat.serving.protocol`.
"""
