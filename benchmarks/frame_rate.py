"""Training cost of the LLM frame rate: k = 1 (25 Hz), 2 (12.5 Hz), 5 (5 Hz).

The same model (a SmolLM2-135M-shaped Llama backbone, random weights, a small Whisper-style encoder
and SRH) and the same data (spoken conversations: user speech in, spoken answer out) are trained for
a few steps at each grouping factor.  Each setting runs in its own process so that peak memory
(max RSS) is measured cleanly.

    python benchmarks/frame_rate.py --steps 3 --out benchmarks/results/frame_rate.json

``--preset paper`` uses the released 8B model's shapes instead (Qwen3-8B backbone, Whisper-large-v3
encoder, 28-layer SRH; random weights, bf16 weights and optimizer state, so it needs a GPU with about
100 GB free):

    python benchmarks/frame_rate.py --preset paper --device cuda --dtype bfloat16 --batch 4 --seconds 20

The paper reports about 50% fewer training GPU hours at 5 Hz than at 25 Hz.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("frame_rate")

BACKBONE = dict(  # SmolLM2-135M's shape
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
)


#: The released 8B model's shapes (docs/architecture.md): Qwen3-8B, Whisper-large-v3, a 28-layer SRH.
PAPER = dict(
    backbone=dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                  num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                  max_position_embeddings=40960, tie_word_embeddings=False),
    encoder=dict(num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280),
    srh=dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
             num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, vocab_size=16),
)
SMALL = dict(
    backbone=dict(model_type="llama", **BACKBONE),
    encoder=dict(num_mel_bins=80, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, d_model=384),
    srh=dict(model_type="qwen3", hidden_size=256, intermediate_size=768, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=16384, vocab_size=16),
)


def build(k: int, preset: str = "small"):
    import torch
    from transformers import AutoConfig

    from funaudiochat.config import FunAudioChatAudioEncoderConfig, FunAudioChatConfig
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration

    shapes = PAPER if preset == "paper" else SMALL
    backbone = dict(shapes["backbone"])
    vocab = backbone["vocab_size"]
    text = AutoConfig.for_model(
        backbone.pop("model_type"), **backbone, audio_bos_index=vocab - 4, audio_eos_index=vocab - 3,
        sil_index=vocab - 1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    audio = FunAudioChatAudioEncoderConfig(
        **shapes["encoder"], output_dim=backbone["hidden_size"], group_size=k, crq_transformer_config=shapes["srh"],
    )
    cfg = FunAudioChatConfig(audio_config=audio, text_config=text, audio_token_index=vocab - 5)
    torch.manual_seed(0)
    return FunAudioChatForConditionalGeneration(cfg)


def run_one(k: int, steps: int, batch: int, seconds: float, threads: int, preset: str = "small",
            device: str = "cpu", dtype: str = "float32") -> dict:
    import torch

    from funaudiochat.testing import synthetic_batch

    torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.set_default_dtype(getattr(torch, dtype))  # weights (and so AdamW state) in this dtype
    with dev:  # initialise on the device: random init of 9 B parameters on a CPU takes minutes
        model = build(k, preset)
    torch.set_default_dtype(torch.float32)
    data = synthetic_batch(model.config, batch_size=batch, user_seconds=seconds, answer_seconds=seconds, text_tokens=int(seconds * 3))
    data = {n: (v.to(dev, dtype=model.dtype) if v.is_floating_point() else v.to(dev)) if torch.is_tensor(v) else v
            for n, v in data.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for i in range(steps + 1):
        sync()
        t = time.perf_counter()
        out = model(**data)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sync()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t)
    result = {
        "k": k,
        "llm_hz": 25 / k,
        "llm_positions_per_row": int(data["input_ids"].shape[1]),
        "step_s": sum(times) / len(times),
        "step_s_all": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
    }
    if dev.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", default="1,2,5", help="grouping factors to compare (default 1,2,5)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per setting (after 1 warm-up)")
    p.add_argument("--batch", type=int, default=2, help="conversations per batch")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds of user speech and of spoken answer per conversation")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--preset", choices=["small", "paper"], default="small",
                   help="model shapes: small (SmolLM2-135M backbone) or paper (the released 8B model's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and optimizer state")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.steps, args.batch, args.seconds, args.threads, args.preset,
                                 args.device, args.dtype)))
        return 0
    results = []
    for k in [int(x) for x in args.ks.split(",")]:
        logger.info("k=%d ...", k)
        cmd = [sys.executable, __file__, "--one", str(k), "--steps", str(args.steps), "--batch", str(args.batch),
               "--seconds", str(args.seconds), "--threads", str(args.threads), "--preset", args.preset,
               "--device", args.device, "--dtype", args.dtype]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        logger.info("k=%d: %.2f s/step, %.0f MB peak", k, results[-1]["step_s"], results[-1]["peak_rss_mb"])
    base = next((r for r in results if r["k"] == 1), results[0])
    mem = "peak_gpu_mb" if "peak_gpu_mb" in base else "peak_rss_mb"
    print(f"| k | LLM rate | LLM positions / row | step time (s) | vs 25 Hz | {mem.replace('_', ' ')} |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['k']} | {r['llm_hz']:g} Hz | {r['llm_positions_per_row']} | {r['step_s']:.3f} | "
              f"{r['step_s'] / base['step_s']:.0%} | {r[mem]:.0f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
