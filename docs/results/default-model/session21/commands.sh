#!/usr/bin/env bash
# Session 21 (2026-11-29, 2-core CPU, no GPU): the full CPU build with Whisper base and the spelling table
# (session 18's command plus session 20's --ctc-spelling-buckets 8192), from scratch, alone on the cores,
# then spoken QA on it.  Run from the repo root.  docs/default-model-history.md, "Session 21".
set -euo pipefail
R=docs/results/default-model/session21
work=build/s21; res=build/eval_s21
data=../shared/benchdata/llama_questions/dev.jsonl
export OMP_NUM_THREADS=2

# 1. The build (every stage, one command).
/usr/bin/time -v funaudiochat -v build-default --out build/s21-out --work $work --train-new-tokens \
  --encoder base --encoder-trainable-layers 2 --ctc-spelling-buckets 8192 --benchdata ../shared/benchdata
cp $work/timings.json $R/timings.json
cp $work/recipes/*.yaml $R/

# 2. The CTC stage's greedy transcripts of all 210 real LLaMA-Questions recordings (later stages keep
#    the speech-in path frozen, so these are the final model's transcripts too).  The rows came out
#    byte for byte those of session 20's build (cmp), so only session 20's copy is kept.
python scripts/ctc_transcribe.py $work/runs/ctc_alignment/final $data --out build/s21_ctc_rows.jsonl > $R/ctc_wer_ctc_stage.json
cmp build/s21_ctc_rows.jsonl docs/results/default-model/session20/ctc_rows_s20sp_ctc_stage.jsonl
C=docs/results/default-model/session20/ctc_rows_s20sp_ctc_stage.jsonl

# 3. Text in by stage (the Core-Cocktail table) and spoken QA, first 100 items of each dev set, the build's
#    1,749 training questions excluded.  s21_stage1_s2t ran during stage 2 of step 1 (one thread); the DPO
#    model's text and LLaMA-Q s2t runs ran on two threads, the rest on one, beside other work.
ev() { funaudiochat eval --model "$1" --sets "$2" --modes "$3" --name "$4" --out "$res/$4" --limit 100 \
         --batch-size 16 --exclude-ids $work/questions.jsonl --no-progress --max-seconds 8; }
ev $work/init llama_questions,web_questions,triviaqa text s21_base
ev $work/runs/core_cocktail_stage1/final llama_questions,web_questions,triviaqa text s21_stage1
ev $work/runs/core_cocktail_stage1/final llama_questions s2t s21_stage1_s2t
ev $work/runs/merged llama_questions,web_questions,triviaqa text s21_merged
ev $work/runs/core_cocktail_stage2/final llama_questions,web_questions,triviaqa text s21_core_cocktail_stage2
ev $work/runs/dpo/final llama_questions,web_questions,triviaqa text s21_dpo
ev $work/runs/dpo/final llama_questions s2t s21_dpo_s2t
ev $work/runs/dpo/final web_questions,triviaqa s2t s21_dpo_s2t_synth
funaudiochat eval-report --out $R/text_by_stage.md $res/s21_base $res/s21_stage1 $res/s21_merged \
  $res/s21_core_cocktail_stage2 $res/s21_dpo
for x in s21_stage1_s2t s21_dpo_s2t s21_dpo_s2t_synth; do cp $res/$x/report.md $R/report_$x.md; done

# 4. s2t by the share of each question's content words the readout heard (the CTC stage's rows).
for s in stage1 dpo; do
  cat $res/s21_$s/items.jsonl $res/s21_${s}_s2t/items.jsonl | grep '"set": "llama_questions"' > $R/qa_items_s21_$s.jsonl
  python scripts/s2t_by_heard_words.py $R/qa_items_s21_$s.jsonl $C > $R/s2t_by_heard_s21_$s.json
done

# 5. Speech out after DPO (20 LLaMA-Questions recordings, the shipped flow detokenizer).
funaudiochat eval --model $work/runs/dpo/final --sets llama_questions --modes s2s --name s21_dpo_s2s \
  --out $res/s21_dpo_s2s --limit 20 --batch-size 10 --exclude-ids $work/questions.jsonl --no-progress --max-seconds 8
cp $res/s21_dpo_s2s/report.md $R/report_s21_dpo_s2s.md

# 6. The package in place of the shipped one (not committed): the README demo, cold (empty cache) then warm,
#    and the shipped model warm on the same machine.
cp build/s21-out/* funaudiochat/assets/default_model/
FUNAUDIOCHAT_CACHE=/tmp/fc_cache /usr/bin/time -f "%e s wall, %M KB" funaudiochat demo --out /tmp/a.wav
FUNAUDIOCHAT_CACHE=/tmp/fc_cache /usr/bin/time -f "%e s wall, %M KB" funaudiochat demo --out /tmp/a.wav
git checkout funaudiochat/assets/default_model

# 7. The full-duplex extra on this build: its data was made, and training was stopped at step 31 of 400
#    (8 s a step beside step 3's evaluations), for time.
funaudiochat -v build-default-duplex --work $work --out build/s21-out-duplex --base build/s21-out

# 8. The no-merge ablation: stage 2 and DPO again from stage 1 without the merge (into $work/runs_nomerge;
#    the preset is the same recipe as step 1's flags), then its text in and LLaMA-Q s2t.
funaudiochat -v build-default --out build/s21-out --work $work --preset cpu-base --benchdata ../shared/benchdata \
  --ablation-no-merge
cp $work/timings_nomerge.json $R/timings_nomerge.json
ev $work/runs_nomerge/dpo/final llama_questions,web_questions,triviaqa text s21_nomerge_dpo
ev $work/runs_nomerge/dpo/final llama_questions s2t s21_nomerge_dpo_s2t
cp $res/s21_nomerge_dpo/report.md $R/report_s21_nomerge_dpo.md
cp $res/s21_nomerge_dpo_s2t/report.md $R/report_s21_nomerge_dpo_s2t.md
