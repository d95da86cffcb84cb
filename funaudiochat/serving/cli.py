"""``funaudiochat serve``: the voice server, its OpenAI-compatible API and the web page."""

from __future__ import annotations

import argparse
import logging
import os

logger = logging.getLogger(__name__)


def _tiny_engine(seed: int):
    """A random tiny model (no checkpoint needed): for trying the page and both voice protocols.

    It gets an untrained duplex head so that /v1/duplex can be tried too (the head is biased towards
    listening, so in full duplex it stays quiet); the half-duplex weights are the same as without it.
    """
    import torch

    from funaudiochat.config import tiny_config
    from funaudiochat.duplex.model import enable_duplex
    from funaudiochat.generation import Engine
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.processing import FunAudioChatProcessor
    from funaudiochat.testing import word_tokenizer

    torch.manual_seed(seed)
    cfg = tiny_config()
    model = enable_duplex(FunAudioChatForConditionalGeneration(cfg))
    return Engine(model, FunAudioChatProcessor(word_tokenizer(vocab_size=512), cfg))


def cmd_serve(args: argparse.Namespace) -> int:
    from funaudiochat.serving.server import serve
    from funaudiochat.serving.settings import ServerSettings

    settings = ServerSettings(
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("FUNAUDIOCHAT_API_KEY") or None,
        model_name=args.model_name or ("funaudiochat-tiny" if args.tiny or args.model in ("default", "default-duplex")
                                       else os.path.basename(os.path.normpath(args.model))),
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        max_audio_seconds=args.max_audio_seconds,
        max_output_seconds=args.max_output_seconds,
        default_output_seconds=min(args.default_output_seconds, args.max_output_seconds),
        max_sessions=args.max_sessions,
        max_duplex_sessions=args.max_duplex_sessions,
        max_http_concurrency=args.max_http_concurrency,
        max_batch=args.max_batch,
        vad_backend=args.vad,
    )  # validates first: no model is loaded for a server that may not start
    from funaudiochat.chat import attach_detokenizer

    if args.tiny:
        engine = _tiny_engine(args.seed)
    else:
        from funaudiochat.chat import load_engine

        engine = load_engine(args.model, args.dtype)
    attach_detokenizer(engine, args.detokenizer, args.detokenizer_path)
    asr = None
    if args.asr:
        from funaudiochat.speech.asr import LocalASR

        class _Transcriber:  # LocalASR picks the model per call; the session only passes audio
            def __init__(self, model: str) -> None:
                self.asr, self.model = LocalASR(), model

            def transcribe(self, audio):
                return self.asr.transcribe(audio, model=self.model)

        asr = _Transcriber(args.asr)
    logger.warning("open http://%s:%d/ in a browser (protocol: docs/serving.md)", settings.host, settings.port)
    serve(engine, settings, asr)
    return 0


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the voice server: WebSocket voice chat, OpenAI-compatible API and a web page",
        description="Serve a model over HTTP on one port: a streaming voice protocol at /v1/realtime "
        "(turn by turn), full duplex at /v1/duplex when the model has a duplex head (docs/serving.md), "
        "POST /v1/chat/completions and GET /v1/models in OpenAI's format, and a web page at / with "
        "microphone capture. Binds to 127.0.0.1 unless --host says otherwise; any other address requires --api-key.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="default",
                     help="checkpoint directory (config.json, safetensors, tokenizer), or 'default' for the "
                     "embedded funaudiochat-tiny (default; 'default-duplex': its full-duplex version, for /v1/duplex)")
    src.add_argument("--tiny", action="store_true",
                     help="serve a random tiny model with an untrained duplex head (for trying the protocols and page)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype (default float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --tiny model (default 0)")
    p.add_argument("--model-name", help="the id reported by /v1/models (default: the directory name)")
    p.add_argument("--detokenizer", default="auto", choices=["auto", "none", "flow", "cosyvoice"],
                   help="speech tokens -> audio; auto = the embedded one when it fits the model (default auto)")
    p.add_argument("--detokenizer-path", help="detokenizer folder (cosyvoice: the Fun-CosyVoice3 model folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (WebSocket: ?api_key=KEY); "
                   "mandatory off loopback; also read from $FUNAUDIOCHAT_API_KEY")
    p.add_argument("--max-sessions", type=int, default=16, help="concurrent voice sessions (default 16)")
    p.add_argument("--max-duplex-sessions", type=int, default=4,
                   help="of those, full-duplex sessions (/v1/duplex); each runs a model step every 200 ms (default 4)")
    p.add_argument("--max-http-concurrency", type=int, default=8, help="concurrent chat completions (default 8)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="most replies decoded together in one batch; replies that start in the same scheduler round "
                   "with equal options share a batch (default 8; 1 = one at a time, round-robin)")
    p.add_argument("--max-audio-seconds", type=float, default=60.0, help="longest user utterance (default 60)")
    p.add_argument("--max-output-seconds", type=float, default=60.0, help="longest reply a client may ask for (default 60)")
    p.add_argument("--default-output-seconds", type=float, default=30.0, help="reply limit when the client sets none (default 30)")
    p.add_argument("--max-request-mb", type=float, default=16.0, help="largest HTTP body in MiB (default 16)")
    p.add_argument("--vad", default="auto", choices=["auto", "silero", "energy"], help="hands-free turn detection (default auto: silero if installed)")
    p.add_argument("--asr", metavar="MODEL", help="show the user's words with funaudiochat.speech.asr.LocalASR (e.g. base); default: '[speech]'")
    p.set_defaults(func=cmd_serve)
