#!/usr/bin/env bash
# Session 24 (CPU only): the Speech Refined Head ignored its previous token. Commands as run, from the
# repo root, on session 22's finished work dir build/s22 (its DPO model is the shipped model).
set -euo pipefail
R=docs/results/default-model/session24

# 0. bf16 autocast on this CPU (Intel Xeon with avx512_bf16), 12 CTC steps and 8 stage-1 steps each:
for mp in "'no'" bf16; do
  python -m funaudiochat.training.cli train build/s22/recipes/ctc_alignment.yaml --set train.max_steps=12 \
    --set output.dir=/tmp/bf/ctc_$mp --set output.save_every=1000 --set train.mixed_precision=$mp
  python -m funaudiochat.training.cli train build/s22/recipes/core_cocktail_stage1.yaml --set train.max_steps=8 \
    --set output.dir=/tmp/bf/s1_$mp --set output.save_every=1000 --set train.mixed_precision=$mp
done

# 1. How predictable the answer tokens are from the previous token alone.
python $R/token_stats.py build/s22 > $R/token_stats.json

# 2. SRH-only runs on cached states (60 held-out replies by train_codec.heldout, 1,200 / 1,144 train).
python scripts/srh_layout_experiment.py cache --work build/s22 --model build/s22/runs/dpo/final --out /tmp/srh \
  --n-train 1200 --n-val 60 --layouts ahead paced
python $R/cache_split.py   # state and text embedding kept apart, paced layout
python $R/srh_variants.py --variant untied --steps 600
python $R/srh_variants.py --variant frozen --pre-scale 0.03 --tag _pre003
python $R/srh_variants.py --variant untied_nocond --steps 300
python $R/srh_variants.py --variant untied --standardize --tag _std
python $R/srh_variants.py --variant untied --table-scale 30 --steps 300 --tag _t30
python $R/srh_variants.py --layout paced --variant untied --table-scale 30 --steps 300 --tag _paced_t30
python $R/srh_variants.py --layout paced --variant untied_nocond --steps 300 --tag _paced
python $R/srh_variants.py --layout paced --variant untied --table-scale 30 --steps 1200 --tag _paced_t30_1200  # stopped at 548
python $R/srh_variants.py --variant untied --table-scale 30 --steps 300 --hs 1 --ts 18 --tag _h1_t18
python $R/srh_variants.py --variant untied --table-scale 30 --steps 300 --hs 0 --ts 18 --tag _h0_t18
python $R/srh_variants.py --variant frozen --prev-scale 30 --steps 300 --tag _ps30
# the paced x30 head speaking 40 held-out replies (5 Hz states of the true reply), ASR-WER:
mkdir -p /tmp/srh/run_paced_t30 && cp /tmp/srh/untied_paced_t30_head.pt /tmp/srh/run_paced_t30/srh.pt
python scripts/srh_layout_experiment.py speak --model build/s22/runs/dpo/final --work build/s22 --cache /tmp/srh \
  --layout paced --run /tmp/srh/run_paced_t30 --manifest /tmp/srh/speak_paced_t30.jsonl --n 40
python -m funaudiochat.audio.train_codec evaluate-extra --manifest /tmp/srh/speak_paced_t30.jsonl --n 40 \
  --report $R/variants/eval_speak_paced_t30.json

# 3. The build's SRH stage with the new scale, on the finished work dir (the other stages are skipped).
/usr/bin/time -v funaudiochat -v build-default --preset cpu-base --out build/s24-out --work build/s22 \
  --benchdata ../shared/benchdata --srh-refine 400 --srh-prev-scale 30
cp build/s22/runs/srh_refine/final/srh_refine.json $R/
cp build/s22/runs/srh_refine/metrics.jsonl $R/srh_refine_metrics.jsonl
for m in dpo srh_refine; do
  python scripts/srh_prev_token_probe.py --model build/s22/runs/$m/final --rows /tmp/srh/ahead_val.pt \
    > $R/prev_token_probe_$m.json
done

# 4. Speech out end to end (session 21's command), two sampling seeds, old and new head.
for seed in 0 1; do
  for m in srh_refine dpo; do
    funaudiochat eval --model build/s22/runs/$m/final --sets llama_questions --modes s2s --name s24_${m}_s2s_$seed \
      --out build/eval_s24/${m}_s2s_$seed --limit 20 --batch-size 10 --exclude-ids build/s22/questions.jsonl \
      --no-progress --max-seconds 8 --seed $seed
    cp build/eval_s24/${m}_s2s_$seed/report.md $R/report_s24_${m}_s2s_seed$seed.md
  done
done

# 5. The SRH's share of a joint step: 7.72 / 6.68 s a batch of 8 with the speech loss, 6.51 / 5.47 s without.
python $R/srh_step_share.py

# 6. Pre-alignment again from session 22's CTC model with srh_prev_scale 30 in its config (same recipe).
cp -r build/s22/runs/ctc_alignment/final /tmp/s24_ctc30   # then set audio_config.srh_prev_scale = 30.0 in its config.json
python -m funaudiochat.training.cli train build/s22/recipes/pre_alignment.yaml --set model.path=/tmp/s24_ctc30 \
  --set output.dir=/tmp/s24_pre30
cp /tmp/s24_pre30/metrics.jsonl $R/pre_alignment_scale30_metrics.jsonl

# 7. The package of step 3 through the README demo (then restored), and Whisper base on both spoken answers.
cp build/s24-out/* funaudiochat/assets/default_model/
funaudiochat demo --out /tmp/a24.wav
git checkout funaudiochat/assets/default_model
funaudiochat demo --out /tmp/a22.wav
python -c "from funaudiochat.speech.asr import LocalASR; a = LocalASR(); print(a.transcribe('/tmp/a24.wav')); print(a.transcribe('/tmp/a22.wav'))"
