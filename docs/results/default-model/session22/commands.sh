#!/usr/bin/env bash
# Session 22 (2026-11-29, 2-core CPU, no GPU): the shipped model's build.  `--preset cpu-base` (session
# 21's recipe) from scratch, alone on the cores, then its full-duplex extra, then the package in place of
# session 6's.  Run from the repo root.  docs/default-model-history.md, "Session 22".
set -euo pipefail
R=docs/results/default-model/session22
work=build/s22
export OMP_NUM_THREADS=2

# 1. The build (every stage, one command; --preset cpu-base is now the default).
/usr/bin/time -v funaudiochat -v build-default --preset cpu-base --out build/s22-out --work $work \
  --benchdata ../shared/benchdata
cp $work/timings.json $R/timings.json

# 2. Same inputs and the same trained model as session 21's build.  (The packages' backbone_delta files
#    differed: SVD factors with other signs, same products; packaging now uses a seeded SVD.)
for f in questions.jsonl answers.jsonl data/sft.jsonl data/dpo.jsonl data/ctc.jsonl data/ctc_vocab.jsonl; do
  cmp build/s21/$f $work/$f; done
python - <<'PY2'
import torch
from safetensors.torch import load_file
a, b = (load_file(f"build/{d}/runs/dpo/final/model.safetensors") for d in ("s21", "s22"))
assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
print(f"DPO final weights equal: {len(a)} tensors")
PY2

# 3. The full-duplex extra.  Its data depends only on the build's questions and answers (identical, step 2),
#    so session 21's duplex data and TTS cache were copied and the stage's stamp check reused them.
cp -a build/s21/duplex $work/duplex
/usr/bin/time -v funaudiochat -v build-default-duplex --work $work --out build/s22-out-duplex --base build/s22-out
cp $work/timings_duplex.json $R/timings_duplex.json

# 4. The shipped package: the finished work dir packaged again with the seeded SVD (every stage is skipped),
#    twice, to check the bytes repeat; then the duplex extra added to it (training reused).
funaudiochat -v build-default --out build/s22-pkg --work $work --benchdata ../shared/benchdata
funaudiochat -v build-default --out build/s22-pkg2 --work $work --benchdata ../shared/benchdata
diff <(sha256sum build/s22-pkg/*.safetensors | cut -c1-64) <(sha256sum build/s22-pkg2/*.safetensors | cut -c1-64)
funaudiochat -v build-default-duplex --work $work --out build/s22-pkg --base build/s22-pkg
cp build/s22-pkg/* funaudiochat/assets/default_model/ && chmod 644 funaudiochat/assets/default_model/*

# 5. The duplex extra's evaluation, as session 6's (docs/duplex.md).
funaudiochat eval-duplex --model default-duplex --out build/eval-duplex-s22-thr --sets llama_questions,web_questions,triviaqa \
  --limit 12 --exclude-ids $work/questions.jsonl --start-prob 0.25 --stop-prob 0.2
cp build/eval-duplex-s22-thr/report.md docs/results/duplex/eval-duplex-session22-thr/report.md

# 6. Start-up: the README command on a fresh clone that .ci/run installed (pip install -e .), with an empty
#    cache (cold), then twice more (warm).
git clone -q . /tmp/fresh && cd /tmp/fresh && .ci/run && export FUNAUDIOCHAT_CACHE=/tmp/fresh-cache && rm -rf $FUNAUDIOCHAT_CACHE
for run in cold warm warm; do /usr/bin/time -f "$run %e s" funaudiochat -v demo --out answer.wav; done
