#!/usr/bin/env bash
# Session 18 (2026-11-28, 2-core CPU of the fast kind, no GPU): a full CPU build with Whisper base
# (top 2 layers trained in the CTC stage) and --train-new-tokens, stopped after Core-Cocktail stage 1
# for the session's time.  Run from the repo root.  docs/default-model.md, "Session 18".
set -euo pipefail
d=docs/results/default-model/session18
work=build/s18; res=build/eval_s18
data=../shared/benchdata/llama_questions/dev.jsonl
export OMP_NUM_THREADS=2

# 1. The build.  The same command without --encoder/--encoder-trainable-layers made the questions and
#    part of the answers before it was stopped (those stages do not depend on the encoder); a run with
#    --encoder-trainable-layers 0 (then `--freeze-encoder`, commit f45e70f) was stopped at CTC step 300
#    and its CTC run deleted.  This command did everything else, and was stopped once stage 1 had
#    finished (timings in timings.json).
/usr/bin/time -v funaudiochat -v build-default --out build/s18-out --work $work --train-new-tokens \
  --encoder base --encoder-trainable-layers 2 --benchdata ../shared/benchdata

# 2. The CTC stage's greedy transcripts of all 210 real LLaMA-Questions recordings.  Every later stage
#    keeps this path frozen, so they are also the transcripts of the later models.
python scripts/ctc_transcribe.py $work/runs/ctc_alignment/final $data --out $d/ctc_rows_ctc_stage.jsonl > $d/ctc_wer_ctc_stage.json

# 3. Spoken QA after stage 1 (LLaMA-Questions, real recordings, first 100, text and s2t), and s2t by
#    content words heard.
funaudiochat eval --model $work/runs/core_cocktail_stage1/final --sets llama_questions --modes text,s2t \
  --name s18_stage1 --out $res/stage1_llamaq --limit 100 --batch-size 16 --exclude-ids $work/questions.jsonl \
  --no-progress --max-seconds 8
grep '"set": "llama_questions"' $res/stage1_llamaq/items.jsonl > $d/qa_items_s18_stage1.jsonl
python scripts/s2t_by_heard_words.py $d/qa_items_s18_stage1.jsonl $d/ctc_rows_ctc_stage.jsonl > $d/s2t_by_heard_s18_stage1.json

# 4. The same bands for the stopped K = 0 readout are not measured (its run was deleted); its CTC loss
#    is in ctc_metrics_frozen_encoder.txt as written down when it was stopped.
