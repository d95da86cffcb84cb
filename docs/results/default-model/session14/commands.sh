#!/usr/bin/env bash
# Session 14 (2026-11-27, 2-core CPU, no GPU): SRH-only comparison of the released ("ahead") and the
# paced text layout of spoken replies, on session 12's GPU build (build/s12-pkg-model: its package
# written out as a model folder) and that build's CPU-made work dir (build/s12: answers, answer
# recordings in piper joe's voice, their speech tokens).  Run from the repo root.
set -euo pipefail
E=scripts/srh_layout_experiment.py
P=build/pace
# 1. Cache the SRH inputs of both layouts: 1,200 training replies and 60 held out (train_codec.heldout,
#    1 in 8: the replies the shipped detokenizer was not fine-tuned on).  Replies whose text has more
#    tokens than their speech has groups cannot be paced and are left out of the paced cache (56 + 1).
python $E cache --work build/s12 --model build/s12-pkg-model --out $P/cache --n-train 1200 --n-val 60
# 2. A freshly initialised SRH per layout, same seed, 600 steps of 16 rows (1 thread each, in parallel).
for L in ahead paced; do
  python $E train --model build/s12-pkg-model --cache $P/cache --layout $L --out $P/run_$L --steps 600 --threads 1 &
done; wait
# the data-size check: the paced layout on half its rows (stopped at step 360, long past its best)
python $E train --model build/s12-pkg-model --cache $P/cache --layout paced --out $P/run_paced_half \
  --steps 600 --max-rows 572 --threads 1
# 3. Speak 40 held-out replies (the same 40 for both) and the codec's ceiling (their true tokens).
for L in ahead paced; do
  python $E speak --model build/s12-pkg-model --work build/s12 --cache $P/cache --layout $L --run $P/run_$L \
    --manifest $P/speak_$L.jsonl --n 40
done
python $E speak --model build/s12-pkg-model --work build/s12 --cache $P/cache --layout ahead --truth \
  --manifest $P/truth.jsonl --n 40
# 4. ASR-WER (faster-whisper base, beam 5) against the written answer, shipped detokenizer.
for m in truth speak_ahead speak_paced; do
  python -m funaudiochat.audio.train_codec evaluate-extra --manifest $P/$m.jsonl --n 40 --report $P/eval_$m.json
done
# 5. More material: the build's 521 vocabulary sentences recorded in joe's voice plus 600 more of the
#    pool spoken by piper joe (5.5 min with tokenizing), each as [system, "Please read this sentence aloud: X", spoken X];
#    cached in the paced layout (1,116 fit) and added to the paced run's rows.
python $E extra --work build/s12 --out $P/extra --synthesize 600
python $E cache --work build/s12 --model build/s12-pkg-model --out $P/cache --layouts paced --extra $P/extra/extra.jsonl
python $E train --model build/s12-pkg-model --cache $P/cache --layout paced --out $P/run_paced_extra --steps 600 \
  --extra-rows --threads 2
python $E speak --model build/s12-pkg-model --work build/s12 --cache $P/cache --layout paced --run $P/run_paced_extra \
  --manifest $P/speak_paced_extra.jsonl --n 40
python -m funaudiochat.audio.train_codec evaluate-extra --manifest $P/speak_paced_extra.jsonl --n 40 \
  --report $P/eval_speak_paced_extra.json
# 6. The chart (docs/results/default-model/session14/srh_heldout.png).
D=docs/results/default-model/session14
python $E plot "$P/run_ahead=ahead (released), 1,200 replies" "$P/run_paced=paced, 1,144 replies" \
  "$P/run_paced_half=paced, 572 replies" "$P/run_paced_extra=paced, 1,144 replies + 1,116 read-aloud sentences" \
  --out $D/srh_heldout.png
