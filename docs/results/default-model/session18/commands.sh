#!/usr/bin/env bash
# Session 18 (2026-11-28, 2-core CPU of the fast kind, no GPU): a full CPU build with Whisper base
# (top 2 layers trained in the CTC stage) and --train-new-tokens.  Session 18 stopped it after
# Core-Cocktail stage 1 for time; the next session resumed it with the same command (step 5).  Run from
# the repo root.  docs/default-model-history.md, "Session 18".
set -euo pipefail
d=docs/results/default-model/session18
work=build/s18; res=build/eval_s18
data=../shared/benchdata/llama_questions/dev.jsonl
export OMP_NUM_THREADS=2

# 1. The build.  The same command without --encoder/--encoder-trainable-layers made the questions and
#    part of the answers before it was stopped (those stages do not depend on the encoder); a run with
#    --encoder-trainable-layers 0 (then `--freeze-encoder`, commit f45e70f) was stopped at CTC step 300
#    and its CTC run deleted.  This command did everything else, and was stopped once stage 1 had
#    finished; step 5 ran the rest (timings in timings.json).
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

# 5. (next session) The rest of the build: merge, stage 2, DPO and the package (build/s18-out, 38.7 MB).
funaudiochat -v build-default --out build/s18-out --work $work --train-new-tokens \
  --encoder base --encoder-trainable-layers 2 --benchdata ../shared/benchdata
cp $work/timings.json $d/timings.json

# 6. The stage-1 model asked the readout's transcripts, typed, and the written questions in the same form.
#    (Steps 6-7 ran with other scratch folder names under build/; the commands are otherwise as run.)
python scripts/typed_transcripts.py make $data $d/ctc_rows_ctc_stage.jsonl build/typed
for form in ctc plain; do
  funaudiochat eval --model $work/runs/core_cocktail_stage1/final --sets build/typed/$form/llama_questions.jsonl \
    --modes text --name s18_stage1_typed_$form --out $res/typed_$form --limit 100 --batch-size 16 \
    --exclude-ids $work/questions.jsonl --no-progress --max-seconds 8
  cp $res/typed_$form/items.jsonl $d/qa_items_s18_stage1_typed_$form.jsonl
done
python scripts/typed_transcripts.py overlap $d/qa_items_s18_stage1.jsonl:text $d/qa_items_s18_stage1_typed_plain.jsonl:text \
  $d/qa_items_s18_stage1_typed_ctc.jsonl:text $d/qa_items_s18_stage1.jsonl:s2t > $d/typed_vs_spoken_s18_stage1.json

# 7. Text in by stage (the Core-Cocktail table), spoken QA after DPO, and the bands after DPO.
ev() { funaudiochat eval --model "$1" --sets "$2" --modes "$3" --name "$4" --out "$res/$4" --limit 100 \
         --batch-size 16 --exclude-ids $work/questions.jsonl --no-progress --max-seconds 8; }
ev $work/init llama_questions,web_questions,triviaqa text s18_base
ev $work/runs/core_cocktail_stage1/final llama_questions,web_questions,triviaqa text s18_stage1
ev $work/runs/merged llama_questions,web_questions,triviaqa text s18_merged
ev $work/runs/core_cocktail_stage2/final llama_questions,web_questions,triviaqa text s18_core_cocktail_stage2
ev $work/runs/dpo/final llama_questions,web_questions,triviaqa text s18_dpo
ev $work/runs/dpo/final llama_questions s2t s18_dpo_s2t
cat $res/s18_dpo/items.jsonl $res/s18_dpo_s2t/items.jsonl | grep '"set": "llama_questions"' > $d/qa_items_s18_dpo.jsonl
python scripts/s2t_by_heard_words.py $d/qa_items_s18_dpo.jsonl $d/ctc_rows_ctc_stage.jsonl > $d/s2t_by_heard_s18_dpo.json
funaudiochat eval-report --out $d/text_by_stage.md $res/s18_base $res/s18_stage1 $res/s18_merged \
  $res/s18_core_cocktail_stage2 $res/s18_dpo

# 8. The no-merge ablation: stage 2 and DPO again from stage 1 (into $work/runs_nomerge), and its text in.
funaudiochat -v build-default --out build/s18-out --work $work --train-new-tokens --encoder base \
  --encoder-trainable-layers 2 --benchdata ../shared/benchdata --ablation-no-merge
ev $work/runs_nomerge/core_cocktail_stage2/final llama_questions,web_questions,triviaqa text s18_nomerge_core_cocktail_stage2
ev $work/runs_nomerge/dpo/final llama_questions,web_questions,triviaqa text s18_nomerge_dpo
ev $work/runs_nomerge/dpo/final llama_questions s2t s18_nomerge_dpo_s2t
funaudiochat eval-report --out $d/text_by_stage_nomerge.md $res/s18_base $res/s18_stage1 \
  $res/s18_nomerge_core_cocktail_stage2 $res/s18_nomerge_dpo
cp $work/timings_nomerge.json $d/

# 9. Speech out after DPO (20 LLaMA-Questions recordings, the shipped flow detokenizer).
funaudiochat eval --model $work/runs/dpo/final --sets llama_questions --modes s2s --name s18_dpo_s2s \
  --out $res/s18_dpo_s2s --limit 20 --batch-size 10 --exclude-ids $work/questions.jsonl --no-progress --max-seconds 8
cp $res/s18_dpo_s2s/report.md $d/report_s18_dpo_s2s.md

# 10. Speech in on the synthesized dev sets after DPO (piper/espeak, kept within 20 % Whisper-base WER).
funaudiochat eval --model $work/runs/dpo/final --sets web_questions,triviaqa --modes s2t --name s18_dpo_s2t_synth \
  --out $res/s18_dpo_s2t_synth --limit 100 --batch-size 16 --exclude-ids $work/questions.jsonl --no-progress --max-seconds 8
cp $res/s18_dpo_s2t_synth/report.md $d/report_s18_dpo_s2t_synth.md
cp $res/s18_dpo_s2t/report.md $d/report_s18_dpo_s2t.md
cp $res/s18_nomerge_dpo_s2t/report.md $d/report_s18_nomerge_dpo_s2t.md
