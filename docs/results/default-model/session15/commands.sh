#!/usr/bin/env bash
# Session 15 (2026-11-27, 2-core CPU, no GPU): does the SRH keep improving with ~4x more assistant-voice
# material?  Same setup as session 14 (docs/results/default-model/session14/commands.sh, whose caches in
# build/pace are reused): session 12's GPU build (build/s12-pkg-model), its CPU-made work dir (build/s12),
# the paced layout, a freshly initialised SRH, the same 60 held-out replies.  Run from the repo root.
set -euo pipefail
E=scripts/srh_layout_experiment.py
P=build/pace
R=build/ra
# 1. 3,000 read-aloud turns made by the build's new stage (funaudiochat/default_model/read_aloud.py):
#    pool sentences the build's vocabulary set did not speak, said by piper joe, tokenized, with word starts.
python $E extra --work build/s12 --out $R --read-aloud 3000 --threads 1
# 2. Their SRH inputs under session 12's backbone, paced layout (-> $R/cache/paced_extra.pt).
python $E cache --work build/s12 --model build/s12-pkg-model --out $R/cache --layouts paced --extra $R/extra.jsonl --threads 1
# 3. Two SRHs, same seed, 1,200 steps of 16 rows: the replies + session 14's 1,116 read-aloud sentences, and the
#    same plus the 3,000 new turns.
python $E train --model build/s12-pkg-model --cache $P/cache --layout paced --out $R/run_extra1116_1200 --steps 1200 \
  --extra-rows --threads 1
python $E train --model build/s12-pkg-model --cache $P/cache --layout paced --out $R/run_extra4116_1200 --steps 1200 \
  --extra-rows --extra-cache $R/cache/paced_extra.pt --threads 2
# 4. The 4,109 run speaks the 40 held-out replies of session 14; ASR-WER (faster-whisper base, beam 5, shipped
#    detokenizer).  (The 1,116 run overfit by its last step and was not spoken; session 14 spoke its 600-step twin.)
for run in extra4116_1200; do
  python $E speak --model build/s12-pkg-model --work build/s12 --cache $P/cache --layout paced --run $R/run_$run \
    --manifest $R/speak_$run.jsonl --n 40
  python -m funaudiochat.audio.train_codec evaluate-extra --manifest $R/speak_$run.jsonl --n 40 --report $R/eval_speak_$run.json
done
# 5. The WER spread of sampling: the 4,109 run speaks the same 40 replies again with another sampling seed.
python $E speak --model build/s12-pkg-model --work build/s12 --cache $P/cache --layout paced --run $R/run_extra4116_1200 \
  --manifest $R/speak_extra4116_1200_seed1.jsonl --n 40 --seed 1 --threads 1
python -m funaudiochat.audio.train_codec evaluate-extra --manifest $R/speak_extra4116_1200_seed1.jsonl --n 40 \
  --report $R/eval_speak_extra4116_1200_seed1.json
# 6. The chart (docs/results/default-model/session15/srh_heldout.png).
python $E plot "$P/run_paced=paced, 1,144 replies, 600 steps" "$P/run_paced_extra=+ 1,116 read-aloud, 600 steps" \
  "$R/run_extra1116_1200=+ 1,116 read-aloud, 1,200 steps" "$R/run_extra4116_1200=+ 4,109 read-aloud, 1,200 steps" \
  --out docs/results/default-model/session15/srh_heldout.png
