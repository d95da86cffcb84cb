"""The OpenAI-compatible HTTP API, through the official ``openai`` client and raw httpx."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from funaudiochat.generation import EndOfTurn, TurnOptions
from funaudiochat.generation.tools import tool_calls_from_text
from funaudiochat.processing import Message
from funaudiochat.serving.openai_api import ChatCompletionRequest, completion_body, to_messages

from .conftest import ToneDetokenizer, noise

openai = pytest.importorskip("openai")


def wav_b64(audio: np.ndarray, sr: int = 16000) -> str:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models(client, settings):
    assert [m.id for m in client.models.list().data] == [settings.model_name]


def test_text_reply_matches_the_engine(client, engine, settings):
    reply = client.chat.completions.create(model=settings.model_name, messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=5, seed=3)
    expected = engine.respond(engine.conversation(seed=3), Message("user", "hello"), TurnOptions(mode="s2t", max_seconds=1.0))
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == ("length" if expected.reason == "max_duration" else "stop")
    assert choice.message.audio is None
    assert reply.usage.completion_tokens == expected.steps and reply.usage.prompt_tokens > 0


def test_audio_in_audio_out(client, engine, settings):
    question = noise(1.0, seed=5)
    messages = [{"role": "system", "content": "be nice"},
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": wav_b64(question), "format": "wav"}}]}]
    reply = client.chat.completions.create(model=settings.model_name, messages=messages, modalities=["text", "audio"],
                                           audio={"voice": "alto", "format": "wav"}, max_tokens=8)
    options = TurnOptions(mode="s2s", max_seconds=1.6, voice="alto")
    from funaudiochat.audio.io import load_audio

    expected = engine.respond(engine.conversation(seed=0), [Message("system", "be nice"),
                                                            Message("user", audio=load_audio(base64.b64decode(wav_b64(question))))], options)
    msg = reply.choices[0].message
    assert msg.content == expected.text and msg.audio.transcript == expected.text
    audio, sr = sf.read(io.BytesIO(base64.b64decode(msg.audio.data)), dtype="float32")
    assert sr == 16000
    np.testing.assert_allclose(audio, ToneDetokenizer.render(expected.speech_tokens), atol=1e-4)


def test_streaming_equals_the_whole_reply(client, settings):
    kwargs = dict(model=settings.model_name, messages=[{"role": "user", "content": "tell me about jupiter"}],
                  modalities=["text", "audio"], audio={"voice": "tenor", "format": "wav"}, max_tokens=10, seed=1)
    whole = client.chat.completions.create(**kwargs)
    text, pcm, finish, roles = [], [], None, []
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        if not chunk.choices:
            usage = chunk.usage
            continue
        delta = chunk.choices[0].delta
        roles.append(delta.role)
        text.append(delta.content or "")
        if delta.audio is not None:
            assert delta.audio.format == "pcm16" and delta.audio.model_extra["sample_rate"] == 16000
            pcm.append(base64.b64decode(delta.audio.data))
        finish = chunk.choices[0].finish_reason or finish
    assert roles[0] == "assistant"
    assert "".join(text).strip() == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    streamed = np.frombuffer(b"".join(pcm), dtype="<i2")
    offline, _ = sf.read(io.BytesIO(base64.b64decode(whole.choices[0].message.audio.data)), dtype="int16")
    np.testing.assert_array_equal(streamed, offline)
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_tools_reply_has_the_openai_shape(client, settings):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    reply = client.chat.completions.create(model=settings.model_name, messages=[{"role": "user", "content": "weather in paris?"}],
                                           tools=tools, max_tokens=6)
    choice = reply.choices[0]
    # the random tiny model writes no valid call: the reply is text, and says so by its finish reason
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls


def test_tool_call_output_becomes_openai_tool_calls():
    """The parsing path, fed a reply text as a trained model would write it."""
    openai_types = pytest.importorskip("openai.types.chat")
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris"}}\n</tool_call>'
    calls, errors = tool_calls_from_text(text)
    end = EndOfTurn(text=text, speech_tokens=[], reason="eos", steps=12, tool_calls=calls, tool_call_errors=errors)
    body = completion_body(end, None, None, "wav", "m", prompt_tokens=30)
    parsed = openai_types.ChatCompletion.model_validate(body)
    call = parsed.choices[0].message.tool_calls[0]
    assert parsed.choices[0].finish_reason == "tool_calls"
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "paris"}
    assert parsed.usage.total_tokens == 42


def test_tool_round_trip_messages(server):
    req = ChatCompletionRequest.model_validate({
        "messages": [
            {"role": "system", "content": "you help"},
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
    })
    msgs = to_messages(req, "s2t", server.state)
    assert [m.role for m in msgs] == ["system", "user", "assistant", "tool"]
    assert msgs[0].text.startswith("you help") and '"name": "get_weather"' in msgs[0].text and "<tools>" in msgs[0].text
    assert json.loads(msgs[2].text.split("\n")[1]) == {"name": "get_weather", "arguments": {"city": "paris"}}
    assert json.loads(msgs[3].text) == {"name": "get_weather", "content": "sunny"}


@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        ({"messages": []}, 400, "invalid_request", "messages"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "invalid_messages", "last message"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "!!!"}}]}]}, 400, "invalid_audio", "base64"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFFjunk").decode()}}]}]},
         400, "invalid_audio", "messages[0].content[0].input_audio"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": wav_b64(noise(4.0))}}]}]},
         400, "invalid_audio", "over the limit of 3 s"),
        ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found", "gpt-9"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}, 400, "invalid_request", "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "audio": {"voice": "bass"}, "modalities": ["text", "audio"]}, 400, "invalid_value", "bass"),
    ],
)
def test_bad_requests_get_json_errors(server, body, status, code, needle):
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and needle in err["message"] + str(err.get("param")), err


def test_request_size_limit(server, settings):
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{" + b" " * settings.max_request_bytes + b"}",
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_concurrency_limit_answers_429(server, settings):
    # occupy every slot as running completions would (deterministic: no race with fast replies)
    server.state.http_requests = settings.max_http_concurrency
    try:
        r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    finally:
        server.state.http_requests = 0
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_requests"
    ok = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200 and server.state.http_requests == 0  # the slot is given back


def test_api_key(engine):
    from funaudiochat.serving.server import BackgroundServer
    from funaudiochat.serving.settings import ServerSettings

    import asyncio

    import websockets

    with BackgroundServer(engine, ServerSettings(api_key="s3cret")) as srv:
        assert httpx.get(f"{srv.url}/v1/models").status_code == 401
        assert httpx.get(f"{srv.url}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{srv.url}/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{srv.url}/").status_code == 200  # the page itself is public; it asks for the key

        async def ws(url):
            async with websockets.connect(url) as conn:
                return json.loads(await conn.recv())

        assert asyncio.run(ws(srv.ws_url))["error"]["code"] == "invalid_api_key"
        assert asyncio.run(ws(srv.ws_url + "?api_key=s3cret"))["type"] == "session.created"


def test_closing_a_stream_cancels_the_reply(server):
    body = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 300, "stream": True, "modalities": ["text", "audio"]}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{server.url}/v1/chat/completions", json=body) as s:
            assert next(s.iter_lines()).startswith("data: ")
    health = {}
    for _ in range(200):  # bounded wait for the server to see the disconnect
        health = httpx.get(f"{server.url}/healthz").json()
        if health["active_replies"] == 0 and health["http_requests"] == 0:
            break
        time.sleep(0.05)
    assert health["active_replies"] == 0 and health["http_requests"] == 0
