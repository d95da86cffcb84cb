#!/usr/bin/env bash
# The exact commands behind docs/default-model-history.md's session-6 build and results (run from the repo root).
set -euo pipefail
export OMP_NUM_THREADS=2
# The work dir started with the first build's questions.jsonl, answers.jsonl and data/ (cp -al) and a
# timings.json holding only their three stage times.
/usr/bin/time -v funaudiochat build-default --out build/s6-out --work build/s6
# The shipped package as a model folder: pip parts + the fp16 files, exactly what `--model default` loads.
python -c 'import sys; from funaudiochat.default_model.package import load_default_model as l; m, t = l(assets_dir=sys.argv[1]); m.save_pretrained(sys.argv[2]); t.save_pretrained(sys.argv[2])' build/s6-out build/s6-pkg-model
# The results: the commands of scripts/eval_build_package.sh (it holds them since session 10).
bash scripts/eval_build_package.sh build/s6 build/eval_s6 build/s6-pkg-model
# The duplex extra on top (its data and TTS cache copied from the session-5 work dir), then its evaluation.
/usr/bin/time -v funaudiochat build-default-duplex --work build/s6 --out build/s6-out-duplex --base build/s6-out
cp build/s6-out-duplex/* funaudiochat/assets/default_model/
funaudiochat eval-duplex --model default-duplex --out build/eval-duplex-s6-thr --sets llama_questions,web_questions,triviaqa \
  --limit 12 --exclude-ids build/s6/questions.jsonl --start-prob 0.25 --stop-prob 0.2
