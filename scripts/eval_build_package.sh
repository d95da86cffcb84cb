#!/usr/bin/env bash
# The results of one default-model build as sessions 6 and 7 measured them (docs/results/default-model/
# sessionN/): spoken QA, CTC transcripts, real-speech transcription, speech out, text-in by stage and
# the speech-reading probe. Run from the repo root after `build-default` and after saving the package
# as a model folder (see those sessions' commands.sh):
#
#   bash scripts/eval_build_package.sh WORK_DIR RESULTS_DIR PACKAGE_MODEL_DIR
#
# It reuses build/eval/tts, build/eval/sets/llama_questions_asr and build/eval/text_base, which
# scripts/eval_default_model.sh makes.
set -euo pipefail
work=${1:?work dir of build-default}; out=${2:?results folder}; pkg=${3:?package saved as a model folder}
n=100
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p $out
qa=llama_questions,web_questions,triviaqa
common=(--exclude-ids "$work/questions.jsonl" --limit "$n" --no-progress --batch-size 16)
funaudiochat eval --model $pkg --sets $qa --modes text,s2t --max-seconds 8 --name shipped \
  --tts-cache build/eval/tts --out "$out/shipped_qa" "${common[@]}"
python scripts/ctc_transcribe.py $pkg ../shared/benchdata/llama_questions/dev.jsonl --out $out/ctc_shipped.jsonl > $out/ctc_shipped_wer.json
python scripts/ctc_transcribe.py $work/runs/ctc_alignment/final ../shared/benchdata/llama_questions/dev.jsonl --out $out/ctc_stage.jsonl > $out/ctc_stage_wer.json
cat $out/ctc_*_wer.json
mkdir -p "$out/sets"; cp -r build/eval/sets/llama_questions_asr "$out/sets/"
funaudiochat eval --model $pkg --sets llama_questions_asr --modes s2t --data-root "$out/sets" \
  --audio-root ../shared/benchdata/llama_questions --name shipped --out "$out/shipped_asr" --limit "$n" --no-progress --batch-size 16
funaudiochat eval --model $pkg --sets $qa --modes s2s --max-seconds 8 --name shipped_s2s \
  --tts-cache build/eval/tts --out "$out/shipped_qa_s2s" --exclude-ids "$work/questions.jsonl" --limit 20 \
  --no-progress --batch-size 8
for name in stage1 merged stage2 dpo; do
  case $name in stage1) m=$work/runs/core_cocktail_stage1/final;; merged) m=$work/runs/merged;;
    stage2) m=$work/runs/core_cocktail_stage2/final;; dpo) m=$work/runs/dpo/final;; esac
  funaudiochat eval --model "$m" --sets $qa --modes text --max-seconds 8 --name "$name" --out "$out/text_$name" "${common[@]}"
done
cp -r build/eval/text_base $out/text_base
funaudiochat eval-report "$out"/text_{base,stage1,merged,stage2,dpo} --out "$out/text_by_stage.md"
for st in pre_alignment core_cocktail_stage1; do
  python scripts/probe_speech_reading.py $work/runs/$st/final --n 24 > $out/probe_$st.json
  cat $out/probe_$st.json
done
