"""Latency and speed of speech-to-speech generation.

Measures, for a spoken question: time to the first text token and to the first speech token after
the end of user speech (prefill included), the real-time factor of the reply (compute time / speech
duration), backbone steps per second, and peak memory.  Without ``--model`` it times a randomly
initialised model of the embedded default's shape (SmolLM2-135M backbone, Whisper-base-sized encoder,
small SRH, the shipped 1024-token codec with its HiFi-GAN), which costs the same per step as the trained one.

    python benchmarks/latency.py --runs 3 --reply-seconds 10 --out benchmarks/results/latency_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path

logger = logging.getLogger("latency")


def random_default_shaped(device: str):
    import torch
    from transformers import AutoConfig

    from funaudiochat.config import FunAudioChatAudioEncoderConfig, FunAudioChatConfig
    from funaudiochat.generation import Engine
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.processing import FunAudioChatProcessor
    from funaudiochat.testing import word_tokenizer

    vocab = 49152
    text = AutoConfig.for_model(
        "llama", vocab_size=vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
        audio_bos_index=vocab - 4, audio_eos_index=vocab - 3, sil_index=vocab - 1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    srh = dict(model_type="qwen3", hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, head_dim=64, max_position_embeddings=16384, vocab_size=16)
    # Whisper-tiny.en-sized encoder, and the shipped codec's 1024-token speech vocabulary.
    audio = FunAudioChatAudioEncoderConfig(num_mel_bins=80, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                                           d_model=384, output_dim=576, crq_transformer_config=srh, codebook_size=1028,
                                           bos_token_id=1024, eos_token_id=1025, pad_token_id=1026)
    cfg = FunAudioChatConfig(audio_config=audio, text_config=text, audio_token_index=vocab - 5)
    torch.manual_seed(0)
    model = FunAudioChatForConditionalGeneration(cfg).to(device)
    return Engine(model, FunAudioChatProcessor(word_tokenizer(vocab_size=vocab), cfg))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory (default: a random model of the embedded default's shape)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3, help="timed turns (after one warm-up)")
    p.add_argument("--question-seconds", type=float, default=4.0)
    p.add_argument("--reply-seconds", type=float, default=10.0, help="reply length (generation is cut there)")
    p.add_argument("--detokenizer", default="auto", choices=["auto", "flow", "none"],
                   help="speech tokens -> audio (auto: the shipped flow model when it fits the model)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    import numpy as np
    import torch

    from funaudiochat.generation import SamplingConfig, TurnOptions
    from funaudiochat.processing import Message

    torch.set_num_threads(args.threads)
    if args.model:
        from funaudiochat.chat import load_engine

        engine = load_engine(args.model, args.dtype)
        engine.model.to(args.device)
    else:
        engine = random_default_shaped(args.device)
        engine.model.to(getattr(torch, args.dtype))
    from funaudiochat.chat import attach_detokenizer

    attach_detokenizer(engine, args.detokenizer, None)
    question = (np.random.default_rng(0).standard_normal(int(16000 * args.question_seconds)) * 0.1).astype(np.float32)
    options = TurnOptions(mode="s2s", max_seconds=args.reply_seconds, speech_sampling=SamplingConfig(temperature=0.8, top_p=0.9))
    rows = []
    for run in range(args.runs + 1):
        conv = engine.conversation(seed=run)
        t = time.perf_counter()
        end = engine.respond(conv, Message("user", audio=question), options)
        total = time.perf_counter() - t
        if run == 0:
            continue  # warm-up
        speech_s = len(end.speech_tokens) / 25
        rows.append({
            "first_text_ms": 1000 * end.timings.get("first_text_s", float("nan")),
            "first_speech_ms": 1000 * end.timings.get("first_speech_s", float("nan")),
            "first_audio_ms": 1000 * end.timings.get("first_audio_s", float("nan")),
            "prefill_ms": 1000 * end.timings["prefill_s"],
            "steps": end.steps,
            "steps_per_s": end.steps / total,
            "speech_seconds": speech_s,
            "rtf": total / speech_s if speech_s else float("nan"),
        })
        logger.info("run %d: %s", run, {k: round(v, 3) for k, v in rows[-1].items()})
    summary = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary["params_m"] = sum(p.numel() for p in engine.model.parameters()) / 1e6
    print(json.dumps({"device": args.device, "dtype": args.dtype, "threads": args.threads, **summary}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows, "median": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
