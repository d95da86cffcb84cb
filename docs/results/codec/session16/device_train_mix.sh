#!/usr/bin/env bash
# Session 16, second device job (run from the repository root there): the joe-only runs of device_train.sh
# forgot the espeak voices, so two detokenizers are tuned on the grammar speech of all three voices
# (build/gpuD/grammar.npz, 1,000 utterances) mixed with a third of the real text (build/gpuE/ex_mix_third.npz,
# 1,679 utterances, 113.3 min). Carried before: build/gpuD/ft_lr1e-3 (device_train.sh's best model).
# Usage: bash device_train_mix.sh MINUTES
set -u
M=${1:-2.75}
T=funaudiochat/assets/speech_tokenizer
EX="--examples build/gpuD/grammar.npz --examples build/gpuE/ex_mix_third.npz"
for f in build/gpuD/grammar.npz build/gpuE/ex_mix_third.npz build/gpuD/ft_lr1e-3/flow.safetensors; do
  [ -f $f ] || { echo "missing $f"; exit 3; }
done
export PYTHONUNBUFFERED=1
D="python3 -m funaudiochat.audio.train_codec detokenizer --work . --tokenizer $T $EX --device cuda --batch 64 --threads 2 --minutes $M"
# (a) the best joe-only model, tuned gently on the mix; (b) the shipped model tuned on the mix at the best rate.
$D --init build/gpuD/ft_lr1e-3 --lr 3e-4 --warmup 50 --out $OUT/mix_from_ft > $OUT/mix_from_ft.log 2>&1 &
$D --init funaudiochat/assets/speech_detokenizer --lr 1e-3 --warmup 200 --out $OUT/mix_from_shipped > $OUT/mix_from_shipped.log 2>&1 &
wait
cat $OUT/mix_from_ft.log $OUT/mix_from_shipped.log > $OUT/train_logs_mix.txt
rm $OUT/*.log
grep -h "saved\|Error\|error" $OUT/train_logs_mix.txt
