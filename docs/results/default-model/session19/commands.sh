#!/usr/bin/env bash
# Session 19 (2026-11-28, 2-core CPU, no GPU): speech sampling of the shipped model's replies, and the
# case of the CTC targets.  Run from the repo root; build/s18 is session 18's work dir.
set -euo pipefail
R=docs/results/default-model/session19
# 1. Speech sampling (new eval options), shipped model, first 20 LLaMA-Q recordings not in build/s18's questions.
run() { name=$1; shift; funaudiochat eval --model default --sets llama_questions --modes s2s --name $name \
  --out build/eval_s19/$name --limit 20 --batch-size 8 --exclude-ids build/s18/questions.jsonl --no-progress "$@"; }
run default
run greedy --speech-temperature 0 --speech-repetition-penalty 1.0
run t08_p09_rp10 --speech-repetition-penalty 1.0
run t05_k5_rp10 --speech-temperature 0.5 --speech-top-k 5 --speech-top-p 1.0 --speech-repetition-penalty 1.0
run greedy_rp12 --speech-temperature 0
# 2. Which content words session 18's CTC readout hears, by token count (names vs other words).
python scripts/heard_by_pieces.py docs/results/default-model/session18/ctc_rows_ctc_stage.jsonl
# 3. The stage-1 model of session 18 asked the written questions in proper-case transcript form.
python scripts/typed_transcripts.py make ../shared/benchdata/llama_questions/dev.jsonl \
  docs/results/default-model/session18/ctc_rows_ctc_stage.jsonl build/typed19
funaudiochat eval --model build/s18/runs/core_cocktail_stage1/final --sets build/typed19/proper/llama_questions.jsonl \
  --modes text --name s18_stage1_typed_proper --out build/eval_s19/typed_proper --limit 100 --batch-size 16 \
  --exclude-ids build/s18/questions.jsonl --no-progress --max-seconds 8
# 4. Lower-case vs proper-case CTC targets: frozen Whisper base, cached states, the same 3,000 recordings
#    (random draw, seed 19, of build/s18's 7,247), 600 steps of 16, one thread each, side by side.
python - <<'PY'
import random
rows = [l for f in ["build/s18/data/ctc.jsonl", "build/s18/data/ctc_vocab.jsonl"] for l in open(f) if l.strip()]
random.Random(19).shuffle(rows)
open("build/s18/data/ctc_probe3000.jsonl", "w").write("".join(rows[:3000]))
PY
python scripts/probe_encoder_ctc.py --encoder base --train build/s18/data/ctc_probe3000.jsonl --out build/probe19/encode_only \
  --cache build/probe19/cache --steps 0   # fills the caches; an untrained readout is scored
for c in lower proper; do
  OMP_NUM_THREADS=1 python scripts/probe_encoder_ctc.py --encoder base --train build/s18/data/ctc_probe3000.jsonl \
    --out build/probe19/$c --cache build/probe19/cache --steps 600 --case $c &
done; wait
python scripts/heard_by_pieces.py $R/probe_lower_transcripts.jsonl $R/probe_proper_transcripts.jsonl
