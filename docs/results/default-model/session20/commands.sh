#!/usr/bin/env bash
# Session 20 (2026-11-29, 2-core CPU, no GPU): a spelling-aware CTC readout (probe).
# Run from the repo root.
set -euo pipefail
R=docs/results/default-model/session20
# 1. The build's data stages only (questions, answers, speech, vocabulary sentences); the build was
#    stopped once data/ctc_vocab.jsonl existed (before init_model).
funaudiochat build-default --out build/s20-out --work build/s20 --encoder base --benchdata ../shared/benchdata
# 2. The same 3,000-recording draw as session 19 (seed 19), frozen Whisper base, cached states.
python - <<'PY'
import random
rows = [l for f in ["build/s20/data/ctc.jsonl", "build/s20/data/ctc_vocab.jsonl"] for l in open(f) if l.strip()]
random.Random(19).shuffle(rows)
open("build/s20/data/ctc_probe3000.jsonl", "w").write("".join(rows[:3000]))
PY
python scripts/probe_encoder_ctc.py --encoder base --train build/s20/data/ctc_probe3000.jsonl --out build/probe20/encode_only \
  --cache build/probe20/cache --steps 0
# 3. Spelling table off / on (8192 buckets), then the control (as many slots per token, hashed from the token
#    id) and the spelling table with proper-case targets: one thread each, two at a time.
for b in 0 8192; do
  OMP_NUM_THREADS=1 python scripts/probe_encoder_ctc.py --encoder base --train build/s20/data/ctc_probe3000.jsonl \
    --out build/probe20/lower_sp$b --cache build/probe20/cache --steps 600 --case lower --spelling-buckets $b &
done; wait
for cfg in "ids lower" "letters proper"; do set -- $cfg
  OMP_NUM_THREADS=1 python scripts/probe_encoder_ctc.py --encoder base --train build/s20/data/ctc_probe3000.jsonl \
    --out build/probe20/${2}_sp8192_$1 --cache build/probe20/cache --steps 600 --case $2 --spelling-buckets 8192 \
    --spelling-source $1 &
done; wait
# 4. Downstream proxy: the shipped model asked each readout's transcript typed in, and the written question
#    lower-cased (the control), first 100 LLaMA-Q questions not among build/s20's training questions.
for x in lower_sp0 lower_sp8192; do
  python scripts/typed_transcripts.py make ../shared/benchdata/llama_questions/dev.jsonl \
    build/probe20/$x/transcripts.jsonl build/typed20/$x
done
for x in lower_sp0/ctc lower_sp8192/ctc lower_sp0/plain; do n=$(echo $x | tr / _)
  funaudiochat eval --model default --sets build/typed20/$x/llama_questions.jsonl --modes text --limit 100 \
    --batch-size 16 --no-progress --max-seconds 8 --exclude-ids build/s20/questions.jsonl \
    --out build/eval_s20/$n --name shipped_typed_$n
done
# 5. Right answers by the share of content words each transcript holds (the written form as "text", the typed
#    transcript relabelled "s2t" for scripts/s2t_by_heard_words.py).
for x in lower_sp0 lower_sp8192; do
  python - $x <<'PY'
import json, sys
x = sys.argv[1]
rows = [json.loads(l) for l in open("build/eval_s20/lower_sp0_plain/items.jsonl")]
rows += [{**json.loads(l), "mode": "s2t"} for l in open(f"build/eval_s20/{x}_ctc/items.jsonl")]
open(f"build/eval_s20/{x}_bands_items.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY
  python scripts/s2t_by_heard_words.py build/eval_s20/${x}_bands_items.jsonl build/probe20/$x/transcripts.jsonl \
    > $R/bands_$x.json
done
# 6. A build's CTC stage with the spelling table: session 18's command plus --ctc-spelling-buckets 8192, in a
#    new work dir holding build/s20's questions, answers and data (hard links; the data stages were skipped).
#    It was stopped during pre_alignment (the CTC stage's timings in s20sp_timings.json).
mkdir -p build/s20sp && cp -al build/s20/data build/s20sp/data && rm build/s20sp/data/ctc_probe3000.jsonl
cp build/s20/questions.jsonl build/s20/answers.jsonl build/s20sp/
OMP_NUM_THREADS=2 funaudiochat -v build-default --out build/s20sp-out --work build/s20sp --train-new-tokens \
  --encoder base --encoder-trainable-layers 2 --ctc-spelling-buckets 8192 --benchdata ../shared/benchdata
python scripts/ctc_transcribe.py build/s20sp/runs/ctc_alignment/final ../shared/benchdata/llama_questions/dev.jsonl \
  --out $R/ctc_rows_s20sp_ctc_stage.jsonl > $R/ctc_wer_s20sp_ctc_stage.json
# 7. Its transcripts and session 18's CTC stage's, typed into the shipped model (as in step 4), with bands (step 5).
for x in s20sp:$R/ctc_rows_s20sp_ctc_stage.jsonl s18:docs/results/default-model/session18/ctc_rows_ctc_stage.jsonl; do
  n=${x%%:*}; f=${x#*:}
  python scripts/typed_transcripts.py make ../shared/benchdata/llama_questions/dev.jsonl $f build/typed20/$n
  funaudiochat eval --model default --sets build/typed20/$n/ctc/llama_questions.jsonl --modes text --limit 100 \
    --batch-size 16 --no-progress --max-seconds 8 --exclude-ids build/s20/questions.jsonl \
    --out build/eval_s20/${n}_ctc --name shipped_typed_${n}_ctc
  python - $n <<'PY'
import json, sys
x = sys.argv[1]
rows = [json.loads(l) for l in open("build/eval_s20/lower_sp0_plain/items.jsonl")]
rows += [{**json.loads(l), "mode": "s2t"} for l in open(f"build/eval_s20/{x}_ctc/items.jsonl")]
open(f"build/eval_s20/{x}_bands_items.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY
  python scripts/s2t_by_heard_words.py build/eval_s20/${n}_bands_items.jsonl $f > $R/bands_$n.json
done
python scripts/typed_transcripts.py overlap build/eval_s20/s18_ctc/items.jsonl:text build/eval_s20/s20sp_ctc/items.jsonl:text
python scripts/heard_by_pieces.py build/probe20/{lower_sp0,lower_sp8192,lower_sp8192_ids,proper_sp8192_letters}/transcripts.jsonl \
  $R/ctc_rows_s20sp_ctc_stage.jsonl > $R/heard_by_pieces.jsonl
