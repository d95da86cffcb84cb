#!/usr/bin/env bash
# Session 22 (2026-11-29, 2-core CPU, no GPU): the shipped model's build.  `--preset cpu-base` (session
# 21's recipe) from scratch, alone on the cores, then its full-duplex extra, then the package in place of
# session 6's.  Run from the repo root.  docs/default-model.md, "Session 22".
set -euo pipefail
R=docs/results/default-model/session22
work=build/s22
export OMP_NUM_THREADS=2

# 1. The build (every stage, one command; --preset cpu-base is now the default).
/usr/bin/time -v funaudiochat -v build-default --preset cpu-base --out build/s22-out --work $work \
  --benchdata ../shared/benchdata
cp $work/timings.json $R/timings.json

# 2. Same inputs and same weights as session 21's build: the package's files hash alike, so session 21's
#    evaluations (docs/results/default-model/session21) are this package's.
for f in questions.jsonl answers.jsonl data/sft.jsonl data/dpo.jsonl data/ctc.jsonl data/ctc_vocab.jsonl; do
  cmp build/s21/$f $work/$f; done
python - <<'PY'
import json
a, b = (json.load(open(f"build/{d}/manifest.json"))["files"] for d in ("s21-out", "s22-out"))
assert {k: v["sha256"] for k, v in a.items()} == {k: v["sha256"] for k, v in b.items()}, (a, b)
print("same package files as session 21")
PY

# 3. The full-duplex extra.  Its data depends only on the build's questions and answers (identical, step 2),
#    so session 21's duplex data and TTS cache were copied and the stage's stamp check reused them.
cp -a build/s21/duplex $work/duplex
/usr/bin/time -v funaudiochat -v build-default-duplex --work $work --out build/s22-out-duplex --base build/s22-out
cp $work/timings_duplex.json $R/timings_duplex.json
