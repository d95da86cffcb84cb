#!/usr/bin/env bash
# Session 28 (CPU only): the shipped recipe (cpu-base) in one command from an empty work dir, then a longer
# CTC stage from the same init and data. Commands as run, from the repo root.
set -euo pipefail
R=docs/results/default-model/session28
work=build/s28

# 1. The build, from nothing (questions to package), alone on the cores.
/usr/bin/time -v funaudiochat -v build-default --preset cpu-base --out build/s28-out --work $work \
  --benchdata ../shared/benchdata
cp $work/timings.json $R/timings.json
# Against the shipped package (the manifests differ only in the stage times they record) and session 26's
# work dir.
for f in speech.safetensors backbone_delta.safetensors; do cmp build/s28-out/$f funaudiochat/assets/default_model/$f; done
for f in questions.jsonl answers.jsonl data/sft.jsonl data/dpo.jsonl data/ctc.jsonl data/ctc_vocab.jsonl \
         runs/ctc_alignment/final/model.safetensors; do cmp $work/$f build/s26/$f; done

# 2. A longer CTC stage (700 steps against 520) from the build's init and data: the build's recipe with only
#    max_steps and the output dir changed (ctc700_recipe.yaml), alone on the cores.
N=700; W=build/s28ctc$N; mkdir -p $W
sed -e "s#max_steps: 520#max_steps: $N#" -e "s#dir: build/s28/runs/ctc_alignment#dir: $W/runs/ctc_alignment#" \
  $work/recipes/ctc_alignment.yaml > $W/ctc_alignment.yaml
cp $W/ctc_alignment.yaml $R/ctc700_recipe.yaml
/usr/bin/time -v python -m funaudiochat.training.cli train $W/ctc_alignment.yaml > $W/train.log 2>&1
cp $work/runs/ctc_alignment/metrics.jsonl $R/ctc520_metrics.jsonl; cp $W/runs/ctc_alignment/metrics.jsonl $R/ctc700_metrics.jsonl

# 3. Each readout's greedy transcripts of all 210 real LLaMA-Questions recordings (WER, content words heard),
#    then those transcripts typed into the shipped model (first 100; the proxy of session 20).
for x in ctc520:$work/runs/ctc_alignment/final ctc700:$W/runs/ctc_alignment/final; do
  n=${x%%:*}; m=${x#*:}
  python scripts/ctc_transcribe.py $m ../shared/benchdata/llama_questions/dev.jsonl \
    --out $R/ctc_rows_$n.jsonl > $R/ctc_wer_$n.json
  python scripts/typed_transcripts.py make ../shared/benchdata/llama_questions/dev.jsonl $R/ctc_rows_$n.jsonl build/typed28/$n
  funaudiochat eval --model default --sets build/typed28/$n/ctc/llama_questions.jsonl --modes text --limit 100 \
    --batch-size 16 --no-progress --max-seconds 8 --exclude-ids $work/questions.jsonl \
    --out build/eval_s28/typed_$n --name shipped_typed_$n
  cp build/eval_s28/typed_$n/report.md $R/report_typed_$n.md
done
sed -i '/^!\[results\](report.png)$/d' $R/report_typed_*.md
# Recordings by the share of their content words heard, and the typed runs' overlap.
python - <<'PY'
import json, sys
sys.path.insert(0, "scripts")
from ctc_transcribe import heard_share
R = "docs/results/default-model/session28"
for n in ("ctc520", "ctc700"):
    shares = [heard_share(r["reference"], r["ctc"]) for r in map(json.loads, open(f"{R}/ctc_rows_{n}.jsonl"))]
    print(n, "all", sum(s == 1 for s in shares), "half or more", sum(s >= 0.5 for s in shares), "none", sum(s == 0 for s in shares))
PY
python scripts/typed_transcripts.py overlap build/eval_s28/typed_ctc520/items.jsonl:text build/eval_s28/typed_ctc700/items.jsonl:text
