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
