#!/usr/bin/env bash
# Session 17 (2026-11-28, 2-core CPU, no GPU): what limits speech in.  Run from the repo root.
# docs/default-model-history.md, "Session 17".
set -euo pipefail
d=docs/results/default-model/session17
data=../shared/benchdata/llama_questions/dev.jsonl

# 1. The shipped model: CTC transcripts of all 210 LLaMA-Questions recordings, then errors by speaking rate.
python scripts/ctc_transcribe.py default $data --out $d/ctc_rows_shipped.jsonl > $d/ctc_wer_shipped.json
python scripts/ctc_errors_by_rate.py $d/ctc_rows_shipped.jsonl $data > $d/rate_shipped.json

# 2. Two 120-step CTC stages from the build's init, one and two CTC positions per 5 Hz group, run at
#    the same time on one thread each.  `ctc_slots` lived in commit b62e677 and was reverted in the
#    next commit: check out b62e677 to rerun this part.  build/slots/init{1,2} are copies of the
#    session-12 work dir's init (the pip parts, seed 0, as in a CPU build) with
#    audio_config.ctc_slots set to 1 and 2; the data are that work dir's ctc.jsonl and ctc_vocab.jsonl.
for s in 1 2; do
  OMP_NUM_THREADS=1 funaudiochat train $d/recipe_ctc_${s}slot*.yaml &
done; wait
python scripts/ctc_transcribe.py build/slots/run1/final $data --out rows1.jsonl > $d/ctc_wer_120steps_1slot.json
python scripts/ctc_transcribe.py build/slots/run2/final $data --out rows2.jsonl > $d/ctc_wer_120steps_2slots.json
python scripts/ctc_errors_by_rate.py rows1.jsonl $data > $d/rate_120steps_1slot.json
python scripts/ctc_errors_by_rate.py rows2.jsonl $data > $d/rate_120steps_2slots.json

# 3. Spoken-QA accuracy by content words heard.  The items are session 12's `funaudiochat eval` runs
#    (build/eval_s12/{shipped_qa,gpu_qa}/items.jsonl; their LLaMA-Questions rows are kept here); the
#    GPU build's transcripts are session 12's (build/eval_s12/ctc_gpu.jsonl).
python scripts/s2t_by_heard_words.py $d/qa_items_shipped.jsonl $d/ctc_rows_shipped.jsonl > $d/s2t_by_heard_shipped.json
python scripts/s2t_by_heard_words.py $d/qa_items_s12_gpu.jsonl $d/ctc_rows_s12_gpu.jsonl > $d/s2t_by_heard_s12_gpu.json

# 4. Frozen Whisper tiny.en vs base under the same CTC readout: 3,000 recordings drawn (random.Random(0)
#    shuffle of ctc.jsonl + ctc_vocab.jsonl, first 3,000; the list is probe_train3000.jsonl), 600 steps
#    of 16, both at once on one thread each.
for e in tiny.en base; do
  OMP_NUM_THREADS=1 python scripts/probe_encoder_ctc.py --encoder $e --train $d/probe_train3000.jsonl \
    --out build/probe/$e --steps 600 > $d/probe_$e.json &
done; wait
