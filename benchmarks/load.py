"""Load test of ``/v1/realtime``: N concurrent simulated voice sessions on loopback.

Each session streams a spoken question as PCM16 frames at real-time pace (push-to-talk: 20 ms
frames, then ``input_audio.commit``) and reads the reply.  Measured per turn, from the commit:
time to first text delta and first audio chunk; per session, real-time factor = wall time of the
reply / seconds of reply speech (speech tokens / 25 Hz); errors (any ``error`` event or failure).

    python benchmarks/load.py                      # tiny random model + tone detokenizer, N = 1 2 4 8
    python benchmarks/load.py --model default --detokenizer real --question-text "What is the capital of France?"
    python benchmarks/load.py --model DIR --sessions 1 4 --turns 3

The tiny model and the stand-in detokenizer measure the server (protocol, scheduling, streaming),
not a real model's speed; ``--model default --detokenizer real`` measures the embedded model with its
shipped codec and HiFi-GAN, asked a question spoken by piper.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funaudiochat.serving.server import BackgroundServer  # noqa: E402
from funaudiochat.serving.settings import ServerSettings  # noqa: E402


class ToneDetokenizer:
    """40 ms of a tone per speech token, in 5-token chunks (a cheap stand-in vocoder)."""

    sample_rate = 16000
    voices = ("tone",)

    def stream(self, voice):
        class Stream:
            buf: list[int] = []

            def push(self, tokens):
                self.buf = self.buf + list(tokens)
                out = []
                while len(self.buf) >= 5:
                    out.append(np.sin(np.arange(3200) * (0.05 + self.buf[0] % 50 / 1000)).astype(np.float32) * 0.2)
                    self.buf = self.buf[5:]
                return out

            def flush(self):
                n, self.buf = len(self.buf), []
                return np.zeros(640 * n, dtype=np.float32)

        return Stream()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def session(url: str, question: bytes, turns: int, reply_seconds: float, results: dict) -> None:
    import websockets

    try:
        async with websockets.connect(url, max_size=None) as ws:
            json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "session.update", "session": {"turn_detection": "none", "max_output_seconds": reply_seconds}}))
            for _ in range(turns):
                frame = 640  # 20 ms of PCM16
                start = time.perf_counter()
                for i in range(0, len(question), frame):
                    await ws.send(question[i : i + frame])
                    await asyncio.sleep(max(0.0, start + (i + frame) / 32000 - time.perf_counter()))  # real-time pace
                t0 = time.perf_counter()
                await ws.send(json.dumps({"type": "input_audio.commit"}))
                first_text = first_audio = None
                while True:
                    msg = await asyncio.wait_for(ws.recv(), 300)
                    now = time.perf_counter() - t0
                    if isinstance(msg, bytes):
                        first_audio = first_audio if first_audio is not None else now
                        continue
                    ev = json.loads(msg)
                    if ev["type"] == "response.text.delta" and first_text is None:
                        first_text = now
                    elif ev["type"] == "error":
                        results["errors"].append(ev["error"]["code"])
                    elif ev["type"] == "response.done":
                        seconds = ev["speech_tokens"] / 25
                        if first_text is not None:
                            results["first_text"].append(first_text)
                        if first_audio is not None:
                            results["first_audio"].append(first_audio)
                        if seconds:
                            results["rtf"].append(now / seconds)
                        break
    except Exception as err:  # noqa: BLE001 - every failure is counted, none hides
        results["errors"].append(f"{type(err).__name__}: {err}")


async def run_level(url: str, n: int, question: bytes, turns: int, reply_seconds: float) -> dict:
    results: dict = {"first_text": [], "first_audio": [], "rtf": [], "errors": []}
    t = time.perf_counter()
    await asyncio.gather(*(session(url, question, turns, reply_seconds, results) for _ in range(n)))
    wall = time.perf_counter() - t
    return {
        "sessions": n,
        "turns": n * turns,
        "first_text_p50_ms": 1000 * percentile(results["first_text"], 50),
        "first_text_p95_ms": 1000 * percentile(results["first_text"], 95),
        "first_audio_p50_ms": 1000 * percentile(results["first_audio"], 50),
        "first_audio_p95_ms": 1000 * percentile(results["first_audio"], 95),
        "rtf_mean": statistics.fmean(results["rtf"]) if results["rtf"] else float("nan"),
        "errors": len(results["errors"]),
        "error_samples": results["errors"][:3],
        "wall_s": wall,
    }


def build_engine(model_dir: str | None, detokenizer: str = "tone"):
    if model_dir:
        from funaudiochat.chat import attach_detokenizer, load_engine

        engine = load_engine(model_dir)
    else:
        from funaudiochat.serving.cli import _tiny_engine

        engine = _tiny_engine(0)
    if detokenizer == "real":
        attach_detokenizer(engine, "flow", None)
    else:
        engine.detokenizer = ToneDetokenizer()
    return engine


def question_audio(text: str | None, seconds: float) -> bytes:
    """PCM16 at 16 kHz: ``text`` spoken by piper, or ``seconds`` of noise."""
    if text:
        from funaudiochat.speech.tts import create_engine

        wave, _ = create_engine("piper").synthesize(text)
    else:
        wave = np.random.default_rng(0).standard_normal(int(16000 * seconds)) * 0.1
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (default: the random tiny model)")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--turns", type=int, default=2, help="turns per session (default 2)")
    p.add_argument("--question-seconds", type=float, default=2.0)
    p.add_argument("--reply-seconds", type=float, default=4.0, help="reply length cap (default 4 s = 20 steps)")
    p.add_argument("--question-text", help="speak this question with piper instead of sending noise")
    p.add_argument("--detokenizer", choices=["tone", "real"], default="tone",
                   help="tone: a cheap stand-in (measures the server); real: the shipped codec + HiFi-GAN")
    p.add_argument("--max-batch", type=int, default=8, help="server's decoding batch cap (1: no batching)")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    engine = build_engine(args.model, args.detokenizer)
    question = question_audio(args.question_text, args.question_seconds)
    rows = []
    settings = ServerSettings(max_sessions=max(args.sessions) + 1, max_output_seconds=max(60.0, args.reply_seconds),
                              max_batch=args.max_batch)
    with BackgroundServer(engine, settings) as srv:
        for n in args.sessions:
            row = asyncio.run(run_level(srv.ws_url, n, question, args.turns, args.reply_seconds))
            rows.append(row)
            print(f"N={n}: first text p50 {row['first_text_p50_ms']:.0f} ms p95 {row['first_text_p95_ms']:.0f} ms | "
                  f"first audio p50 {row['first_audio_p50_ms']:.0f} ms p95 {row['first_audio_p95_ms']:.0f} ms | "
                  f"RTF {row['rtf_mean']:.3f} | errors {row['errors']} {row['error_samples'] or ''}", flush=True)
    print("\n| sessions | turns | first text p50 / p95 (ms) | first audio p50 / p95 (ms) | RTF (mean) | errors |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sessions']} | {r['turns']} | {r['first_text_p50_ms']:.0f} / {r['first_text_p95_ms']:.0f} | "
              f"{r['first_audio_p50_ms']:.0f} / {r['first_audio_p95_ms']:.0f} | {r['rtf_mean']:.3f} | {r['errors']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
