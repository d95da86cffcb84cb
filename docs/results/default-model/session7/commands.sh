#!/usr/bin/env bash
# The exact commands behind docs/default-model.md's session-7 build and results (run from the repo root).
# `bash commands.sh build` makes the package, `bash commands.sh eval` the results, `bash commands.sh duplex`
# the duplex extra and its evaluation.
set -euo pipefail
export OMP_NUM_THREADS=2
work=build/s7; out=build/eval_s7; n=100; pkg=build/s7-pkg-model
case "${1:-}" in
build)
  # The work dir started with the session-6 work dir's questions.jsonl, answers.jsonl and data/ (cp -al),
  # duplex/{cache,data}, and a timings.json holding only the questions/answers/speech_data stage times.
  /usr/bin/time -v funaudiochat build-default --out build/s7-out --work $work
  # The shipped package as a model folder: pip parts + the fp16 files, exactly what `--model default` loads.
  python -c 'import sys; from funaudiochat.default_model.package import load_default_model as l; m, t = l(assets_dir=sys.argv[1]); m.save_pretrained(sys.argv[2]); t.save_pretrained(sys.argv[2])' build/s7-out $pkg
  ;;
eval)
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
  ;;
duplex)
  # The duplex extra on top (its data and TTS cache copied from the session-6 work dir), then its evaluation.
  /usr/bin/time -v funaudiochat build-default-duplex --work $work --out build/s7-out-duplex --base build/s7-out
  cp build/s7-out-duplex/* funaudiochat/assets/default_model/
  funaudiochat eval-duplex --model default-duplex --out build/eval-duplex-s7-thr --sets llama_questions,web_questions,triviaqa \
    --limit 12 --exclude-ids $work/questions.jsonl --start-prob 0.25 --stop-prob 0.2
  ;;
*) echo "usage: bash $0 build|eval|duplex" >&2; exit 2;;
esac
