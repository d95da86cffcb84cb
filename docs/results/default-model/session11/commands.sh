#!/usr/bin/env bash
# Session 11 (2026-11-27, 2-core AMD EPYC, AVX2): speech-in experiments on the shipped model.
# docs/default-model-history.md, "Speech in without a rebuild". Run from the repository root, 2 threads.
# The runs used /tmp/exp/work as WORK and a recipe named ctc_refine_200_0.0003; the script below
# rewrote the same data (ctc.jsonl and ctc_vocab.jsonl byte-identical, checked with cmp) and the
# same recipe (only name and output dir differ); the re-reading data (data/reread.jsonl) is
# byte-identical too. The answers stage of the re-reading (640 questions) was run from a scratch copy
# of reread_data() before it moved into the script.
set -euo pipefail
export OMP_NUM_THREADS=2 FUNAUDIOCHAT_BENCHDATA=../shared/benchdata
work=${1:-build/s11}; out=${2:-build/s11-results}
lq=../shared/benchdata/llama_questions/dev.jsonl

# 1. Reading the posterior at temperature 1 / 0.5 / 0 (argmax): 9 / 6 / 8 of 100 (s2t_shipped_T*.md).
python scripts/ctc_read_sharpness.py default "$out/sharp" --temperatures 1,0.5,0

# 2. CTC refinement of the shipped speech path (579 s of data, 16 min 58 s of training).
python scripts/ctc_refine_shipped.py "$work" --vocab-sentences 3000 --steps 200 --lr 3e-4 --reread-questions 640
funaudiochat train "$work/ctc_refine.yaml" --resume
# 2b. Re-reading: LoRA on text replies + transcriptions, speech-in path frozen (and the control).
funaudiochat train "$work/reread_refined.yaml" --resume
funaudiochat train "$work/reread_shipped.yaml" --resume

# 3. The weight average of the shipped and the refined model (alpha 0.5; every tensor of the folder).
python - "$work" <<'PY'
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
work = Path(sys.argv[1]); a, b, mix = work / "shipped", work / "runs/ctc_refine/final", work / "mix05"
shutil.copytree(b, mix, dirs_exist_ok=True)
for f in b.glob("*.safetensors"):
    sa, sb = load_file(a / f.name), load_file(f)
    save_file({k: 0.5 * sa[k] + 0.5 * v if v.is_floating_point() else v for k, v in sb.items()},
              mix / f.name, metadata={"format": "pt"})
PY

# 4. Measurements (ctc_llama_questions.jsonl, s2t_*.md, eval_reread_*.md, probe.jsonl).
for m in default "$work/runs/ctc_refine/final" "$work/mix05"; do
  python scripts/ctc_transcribe.py "$m" "$lq"
  funaudiochat eval --model "$m" --sets llama_questions --modes s2t --max-seconds 8 --limit 100 \
    --batch-size 16 --no-progress --out "$out/s2t_$(basename "$m")"
done
for m in "$work/runs/reread_refined/final" "$work/runs/reread_shipped/final"; do
  funaudiochat eval --model "$m" --sets llama_questions --modes text,s2t --max-seconds 8 --limit 100 \
    --batch-size 16 --no-progress --out "$out/eval_$(basename "$(dirname "$m")")"
done
# all 210 recordings (s2t_all210_*.md): shipped 10, control 13
for m in default "$work/runs/reread_shipped/final"; do
  funaudiochat eval --model "$m" --sets llama_questions --modes s2t --max-seconds 8 --batch-size 16 \
    --no-progress --out "$out/all210_$(basename "$(dirname "$m")")"
done
for m in default "$work/runs/ctc_refine/final" "$work/runs/reread_refined/final" "$work/runs/reread_shipped/final"; do
  python scripts/probe_speech_reading.py "$m" --n 24
done
