#!/usr/bin/env bash
# The exact commands behind docs/default-model-history.md's session-7 build and results (run from the repo root).
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
  # the commands of scripts/eval_build_package.sh (it holds them since session 10)
  bash scripts/eval_build_package.sh $work $out $pkg
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
