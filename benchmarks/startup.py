"""Start-up of the README's first command (``funaudiochat demo``), cold and warm, and what bounds it.

Each measurement runs in a fresh process, as a user's would:

* ``imports``: ``python -c "import torch, transformers.modeling_utils"``, the floor under any warm
  start of a transformers model on this machine;
* ``gguf_ours`` / ``gguf_transformers``: converting the SmolLM2 GGUF backbone to a transformers
  directory with ``funaudiochat.gguf_llama`` and with transformers' own GGUF loading;
* ``demo_cold`` / ``demo_warm``: ``funaudiochat -v demo`` with an empty ``$FUNAUDIOCHAT_CACHE``, then
  again with the cache it filled.  "ready" is when the demo logs that the model is ready to answer,
  measured from the launch of the process (imports included).

    python benchmarks/startup.py --repeats 2 --out benchmarks/results/startup_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Each script times itself from ``t0`` (after its imports) and prints the seconds.
CONVERT_OURS = """
import sys, time
from funaudiochat.gguf_llama import convert_llama_gguf
from funaudiochat.pretrained import smollm2_gguf
t0 = time.monotonic()
convert_llama_gguf(smollm2_gguf(), sys.argv[1])
print(time.monotonic() - t0)
"""

CONVERT_TRANSFORMERS = """
import sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from funaudiochat.pretrained import smollm2_gguf
t0 = time.monotonic()
g = smollm2_gguf()
tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
model.hf_quantizer = None
del model.config.quantization_config
model.save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
print(time.monotonic() - t0)
"""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of a process that must succeed."""
    start = time.monotonic()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def timed_in_process(script: str, out: Path) -> float:
    """The seconds a conversion script reports (its imports excluded: they are the ``imports`` row)."""
    res = subprocess.run([sys.executable, "-c", script, str(out)], check=True, capture_output=True, text=True)
    return float(res.stdout.strip().splitlines()[-1])


def demo_run(cache: Path, wav: Path) -> dict[str, float]:
    """Launch-to-ready and launch-to-exit of ``funaudiochat -v demo``, from its log lines as they come."""
    env = dict(os.environ, FUNAUDIOCHAT_CACHE=str(cache))
    exe = shutil.which("funaudiochat")
    if exe is None:
        raise SystemExit("the funaudiochat command is not on PATH (pip install -e .)")
    start = time.monotonic()
    proc = subprocess.Popen([exe, "-v", "demo", "--out", str(wav)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ready = None
    for line in proc.stderr:
        if ready is None and "funaudiochat.chat: ready in" in line:
            ready = time.monotonic() - start
    answer = proc.stdout.read().strip()
    if proc.wait() != 0 or ready is None:
        raise SystemExit(f"demo failed (exit {proc.returncode}); run it by hand to see why")
    return {"ready_s": ready, "total_s": time.monotonic() - start, "answer": answer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each measurement (default 2)")
    ap.add_argument("--skip-transformers", action="store_true", help="skip transformers' slow GGUF conversion")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp_name:
        tmp = Path(tmp_name)
        for i in range(args.repeats):
            rows.append({"what": "imports", "seconds": timed(
                [sys.executable, "-c", "import torch, transformers.modeling_utils"])})
            rows.append({"what": "gguf_ours", "seconds": timed_in_process(CONVERT_OURS, tmp / f"ours{i}")})
            if not args.skip_transformers:
                rows.append({"what": "gguf_transformers",
                             "seconds": timed_in_process(CONVERT_TRANSFORMERS, tmp / f"hf{i}")})
            cache = tmp / f"cache{i}"
            for what in ("demo_cold", "demo_warm"):
                rows.append({"what": what, **demo_run(cache, tmp / "answer.wav")})
            for path in tmp.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    print(f"{'what':<20} {'ready (s)':>10} {'total (s)':>10}  answer")
    for r in rows:
        ready = f"{r['ready_s']:.1f}" if "ready_s" in r else ""
        total = r.get("total_s", r.get("seconds"))
        print(f"{r['what']:<20} {ready:>10} {total:>10.1f}  {r.get('answer', '')}")
    if args.out:
        meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                "python": platform.python_version()}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
