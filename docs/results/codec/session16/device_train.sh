#!/usr/bin/env bash
# Session 16, on the lent GPU (run from the repository root there, after build/gpu{A,B,C}/ex{1,2,3}.npz were
# carried): three detokenizers trained side by side on the same 5,036 utterances (342.8 min of piper joe),
# each for the same wall-clock budget. Usage: bash device_train.sh MINUTES
set -u
M=${1:-5.5}
T=funaudiochat/assets/speech_tokenizer
EX="--examples build/gpuA/ex1.npz --examples build/gpuB/ex2.npz --examples build/gpuC/ex3.npz"
for f in build/gpuA/ex1.npz build/gpuB/ex2.npz build/gpuC/ex3.npz; do [ -f $f ] || { echo "missing $f"; exit 3; }; done
nvidia-smi -L
export PYTHONUNBUFFERED=1
D="python3 -m funaudiochat.audio.train_codec detokenizer --work . --tokenizer $T $EX --device cuda --batch 64 --threads 2 --minutes $M"
# (a) the shipped detokenizer fine-tuned at session 13's rate; (b) the same at twice the rate;
# (c) from scratch at the rate of the first GPU-trained model (width 256, the shipped shape).
$D --init funaudiochat/assets/speech_detokenizer --lr 5e-4 --warmup 100 --out $OUT/ft_lr5e-4 > $OUT/ft_lr5e-4.log 2>&1 &
$D --init funaudiochat/assets/speech_detokenizer --lr 1e-3 --warmup 200 --out $OUT/ft_lr1e-3 > $OUT/ft_lr1e-3.log 2>&1 &
$D --dim 256 --lr 2e-3 --warmup 100 --out $OUT/scratch_lr2e-3 > $OUT/scratch_lr2e-3.log 2>&1 &
wait
cat $OUT/ft_lr5e-4.log $OUT/ft_lr1e-3.log $OUT/scratch_lr2e-3.log > $OUT/train_logs.txt
rm $OUT/*.log
grep -h "saved\|Error\|error" $OUT/train_logs.txt
ls -la $OUT/*
