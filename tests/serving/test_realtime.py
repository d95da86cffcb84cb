"""The /v1/realtime protocol against a real uvicorn server on 127.0.0.1 with real WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest
import websockets

from funaudiochat.serving.protocol import PROTOCOL_VERSION

from .conftest import refused_when_full, assert_error_and_alive, error_then_pong, SAMPLES_PER_TOKEN, ToneDetokenizer, espeak_wav, noise, pcm16, recv_json, until


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def open_session(server, **update):
    ws = await websockets.connect(server.ws_url, max_size=None)
    created = await recv_json(ws)
    assert created["type"] == "session.created"
    if update:
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        ev = await recv_json(ws)
        assert ev["type"] == "session.updated", ev
    return ws, created


def test_full_text_turn_streams_text_and_audio(server):
    async def main():
        ws, created = await open_session(server, max_output_seconds=2, turn_detection="none")
        assert created["protocol"] == PROTOCOL_VERSION
        assert created["output_sample_rate"] == 16000 and created["audio_output"] is True
        assert created["voices"] == ["alto", "tenor"]
        await ws.send(json.dumps({"type": "input_text", "text": "hello there"}))
        done, events, binary = await until(ws, "response.done")
        await ws.close()
        return done, events, binary

    done, events, binary = run(main())
    assert events[0]["type"] == "response.created" and events[0]["response_id"] == done["response_id"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.text.delta")
    assert text.strip() == done["text"] and done["text"]
    headers = [e for e in events if e["type"] == "response.audio.delta"]
    assert len(headers) == len(binary) > 0
    assert [h["samples"] for h in headers] == [len(b) // 2 for b in binary]
    tokens = [t for e in events if e["type"] == "response.speech_tokens" for t in e["tokens"]]
    assert len(tokens) == done["speech_tokens"] > 0
    audio = np.frombuffer(b"".join(binary), dtype="<i2").astype(np.float32) / 32767
    np.testing.assert_allclose(audio, ToneDetokenizer.render(tokens), atol=1e-4)  # every token's audio, in order
    assert done["audio_samples"] == len(tokens) * SAMPLES_PER_TOKEN
    assert done["reason"] in ("eos", "max_duration") and done["steps"] <= 12  # 2 s = 10 steps, then the audio end and the turn end
    assert "first_text_ms" in done["latency_ms"] and "first_audio_ms" in done["latency_ms"]


def test_push_to_talk_audio_turns_keep_history(server):
    async def main():
        ws, created = await open_session(server, max_output_seconds=1, turn_detection="none", mode="s2t",
                                         instructions="be brief")
        session = server.state.live[created["session_id"]]
        dones = []
        for seed in range(2):
            audio = pcm16(noise(1.0, seed))
            for i in range(0, len(audio), 3200):  # 100 ms frames, as a microphone would send them
                await ws.send(audio[i : i + 3200])
            await ws.send(json.dumps({"type": "input_audio.commit"}))
            committed = await recv_json(ws)
            assert committed == {**committed, "type": "input_audio.committed", "duration_ms": 1000, "transcript": "[speech]"}
            done, events, binary = await until(ws, "response.done")
            assert binary == [] and done["speech_tokens"] == 0  # s2t: no speech
            dones.append(done)
        roles = [m.role for m in session.conv.messages]
        system = session.conv.messages[0].text
        await ws.close()
        return dones, roles, system

    dones, roles, system = run(main())
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert system == "be brief"
    assert all(d["reason"] in ("eos", "max_duration") for d in dones)


def test_barge_in_cancels_and_keeps_only_what_was_heard(server):
    async def main():
        ws, created = await open_session(server, max_output_seconds=60, turn_detection="none")
        session = server.state.live[created["session_id"]]
        await ws.send(json.dumps({"type": "input_text", "text": "tell me a long story"}))
        await until(ws, "response.audio.delta")
        await ws.send(json.dumps({"type": "response.cancel", "audio_played_ms": 120}))  # 3 speech tokens heard
        done, _, _ = await until(ws, "response.done")
        kept = session.conv.messages[-1]
        # the conversation goes on after an interruption
        await ws.send(json.dumps({"type": "session.update", "session": {"max_output_seconds": 1}}))
        await ws.send(json.dumps({"type": "input_text", "text": "ok"}))
        second, _, _ = await until(ws, "response.done")
        await ws.send(json.dumps({"type": "response.cancel"}))
        late = await recv_json(ws)
        await ws.close()
        return done, kept, second, late

    done, kept, second, late = run(main())
    assert done["reason"] == "cancelled"
    assert done["steps"] < 300  # 60 s would be 300 steps
    assert done["speech_tokens"] == 3
    assert kept.role == "assistant" and len(kept.speech_tokens) == 3
    assert second["reason"] in ("eos", "max_duration")
    assert late["type"] == "error" and late["error"]["code"] == "no_active_response"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"no_type": 1}', "invalid_message"),
        ('{"type": "teleport"}', "unknown_type"),
        (b"\x01\x02\x03", "invalid_audio"),
        ('{"type": "session.update", "session": {"mode": "t2x"}}', "invalid_value"),
        ('{"type": "session.update", "session": {"colour": "blue"}}', "invalid_value"),
        ('{"type": "session.update", "session": {"voice": "bass"}}', "invalid_value"),
        ('{"type": "session.update", "session": {"text_sampling": {"top_p": 0}}}', "invalid_value"),
        ('{"type": "input_audio.commit"}', "empty_audio"),
        ('{"type": "input_text", "text": "   "}', "invalid_value"),
        ('{"type": "input_audio.append", "audio": "@@@"}', "invalid_audio"),
        ('{"type": "response.cancel", "audio_played_ms": "soon"}', "invalid_value"),
    ],
)
def test_malformed_frames_get_error_events_and_the_session_survives(server, frame, code):
    async def main():
        ws, _ = await open_session(server, turn_detection="none")
        return await error_then_pong(ws, frame)

    assert_error_and_alive(*run(main()), code)


def test_base64_audio_and_silence_are_checked(server):
    async def main():
        ws, _ = await open_session(server, turn_detection="none", mode="s2t", max_output_seconds=0.4)
        await ws.send(json.dumps({"type": "input_audio.append", "audio": base64.b64encode(pcm16(np.zeros(8000))).decode()}))
        await ws.send(json.dumps({"type": "input_audio.commit"}))
        silent = await recv_json(ws)
        await ws.send(json.dumps({"type": "input_audio.append", "audio": base64.b64encode(pcm16(noise(0.5))).decode()}))
        await ws.send(json.dumps({"type": "input_audio.commit"}))
        committed = await recv_json(ws)
        done, _, _ = await until(ws, "response.done")
        await ws.close()
        return silent, committed, done

    silent, committed, done = run(main())
    assert silent["error"]["code"] == "invalid_audio" and "silent" in silent["error"]["message"]
    assert committed["duration_ms"] == 500 and done["text"] is not None


def test_oversized_audio_and_frames(server, settings):
    async def main():
        ws, _ = await open_session(server, turn_detection="none")
        second = pcm16(noise(1.0))
        for _ in range(4):  # 4 s > the 3 s limit
            await ws.send(second)
        err = await recv_json(ws)
        await ws.send(json.dumps({"type": "input_audio.commit"}))
        empty = await recv_json(ws)  # the over-long audio was discarded
        await ws.send(b"\x00" * (settings.max_frame_bytes + 2))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(ws, timeout=30)
        return err, empty, closed.value

    err, empty, closed = run(main())
    assert err["error"]["code"] == "audio_too_long" and "over the limit of 3 s" in err["error"]["message"]
    assert empty["error"]["code"] == "empty_audio"
    assert closed.rcvd is not None and closed.rcvd.code == 1009  # message too big
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"


def test_hands_free_vad_ends_the_turn_and_barges_in(server, tmp_path):
    pytest.importorskip("silero_vad")
    pytest.importorskip("onnxruntime")
    speech = espeak_wav("what is the capital of france", tmp_path / "q.wav", lead=0.3, tail=1.0)

    async def main():
        ws, created = await open_session(server, turn_detection="server_vad", silence_ms=400, max_output_seconds=60)
        assert created["vad"] == "silero"
        data = pcm16(speech)
        for i in range(0, len(data), 1024):  # 512-sample frames
            await ws.send(data[i : i + 1024])
        started, _, _ = await until(ws, "input_audio.speech_started")
        committed, _, _ = await until(ws, "input_audio.committed")
        await until(ws, "response.audio.delta")
        for i in range(0, len(data), 1024):  # the user talks over the (60 s) reply
            await ws.send(data[i : i + 1024])
        done, events, _ = await until(ws, "response.done")
        await ws.close()
        return started, committed, done, events

    started, committed, done, events = run(main())
    assert 0 <= started["audio_start_ms"] <= 700
    speech_ms = 1000 * len(speech) / 16000
    assert 1000 < committed["duration_ms"] <= speech_ms
    assert done["reason"] == "cancelled" and done["steps"] < 300
    assert any(e["type"] == "input_audio.speech_started" for e in events)


def test_disconnect_mid_reply_frees_the_model_and_spares_other_sessions(server):
    async def main():
        quitter, _ = await open_session(server, max_output_seconds=60, turn_detection="none")
        other, _ = await open_session(server, max_output_seconds=2, turn_detection="none")
        await quitter.send(json.dumps({"type": "input_text", "text": "talk for a minute"}))
        await until(quitter, "response.text.delta")
        await other.send(json.dumps({"type": "input_text", "text": "hi"}))
        quitter.transport.abort()  # vanish without a closing handshake, like a dropped network
        done, _, _ = await until(other, "response.done")
        await other.close()
        return done

    done = run(main())
    assert done["reason"] in ("eos", "max_duration")
    health = {}
    for _ in range(200):  # bounded wait for the server to notice both closes
        health = httpx.get(f"{server.url}/healthz").json()
        if health["sessions"] == 0 and health["active_replies"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert health["sessions"] == 0 and health["active_replies"] == 0


def test_session_limit(server, settings):
    async def main():
        held = [await open_session(server) for _ in range(settings.max_sessions)]
        return await refused_when_full(held, server.ws_url)

    err, closed = run(main())
    assert err["error"]["code"] == "too_many_sessions"
    assert closed.rcvd.code == 1013
