"""``funaudiochat serve`` argument handling (the server itself is tested through BackgroundServer)."""

from __future__ import annotations

import argparse

import pytest

from funaudiochat.chat import attach_detokenizer
from funaudiochat.serving.cli import add_serve_parser


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="funaudiochat")
    add_serve_parser(p.add_subparsers(dest="command"))
    return p


def test_defaults_bind_to_loopback():
    args = parser().parse_args(["serve", "--tiny"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.api_key is None and callable(args.func)


def test_refuses_an_exposed_address_without_a_key(monkeypatch):
    monkeypatch.delenv("FUNAUDIOCHAT_API_KEY", raising=False)
    args = parser().parse_args(["serve", "--tiny", "--host", "0.0.0.0"])
    with pytest.raises(ValueError, match="refusing to serve on '0.0.0.0' without an API key"):
        args.func(args)


def test_serves_the_embedded_model_by_default_and_names_a_bad_model_dir(tmp_path):
    assert parser().parse_args(["serve"]).model == "default"
    args = parser().parse_args(["serve", "--model", str(tmp_path)])
    with pytest.raises(SystemExit, match="is not a model directory"):
        args.func(args)


def test_a_detokenizer_with_another_codebook_is_not_attached(engine, monkeypatch):
    class OtherCodebook:
        codebook_size = 1024

    monkeypatch.setattr("funaudiochat.audio.detokenizer.load_detokenizer", lambda *a, **k: OtherCodebook())
    monkeypatch.setattr(engine, "detokenizer", None)
    attach_detokenizer(engine, "auto", None)  # auto: serve without audio
    assert engine.detokenizer is None
    with pytest.raises(ValueError, match="reads 1024 speech tokens but the model makes 6561"):
        attach_detokenizer(engine, "flow", None)  # asked for explicitly: an error


def test_max_batch_reaches_the_scheduler(monkeypatch):
    from funaudiochat.serving.server import create_app

    seen = {}

    def fake_serve(engine, settings, asr=None):
        seen["scheduler"] = create_app(engine, settings).state.serving.scheduler

    monkeypatch.setattr("funaudiochat.serving.server.serve", fake_serve)
    assert parser().parse_args(["serve"]).max_batch == 8
    args = parser().parse_args(["serve", "--tiny", "--detokenizer", "none", "--max-batch", "3"])
    assert args.func(args) == 0
    assert seen["scheduler"].max_batch == 3
    args = parser().parse_args(["serve", "--tiny", "--detokenizer", "none", "--max-batch", "0"])
    with pytest.raises(ValueError, match="max_batch must be positive"):
        args.func(args)
