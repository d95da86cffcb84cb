#!/usr/bin/env bash
# Session 26 (CPU only): the default recipe built from an empty work dir in one command, alone on the
# cores, and compared byte for byte with session 25's build (the shipped package); then text in by
# stage and the no-merge ablation on it. Commands as run, from the repo root.
set -euo pipefail
R=docs/results/default-model/session26
work=build/s26; res=build/eval_s26

# 1. The build, from nothing (questions to package).
/usr/bin/time -v funaudiochat -v build-default --preset cpu-base --out build/s26-out --work $work \
  --benchdata ../shared/benchdata
cp $work/timings.json $R/timings.json
# Every stage's output against session 25's work dir (session 22's for the stages before pre-alignment,
# which session 25 hard-linked in), and the package against the shipped files.
cmp $work/questions.jsonl build/s25/questions.jsonl && cmp $work/answers.jsonl build/s25/answers.jsonl
for f in sft.jsonl dpo.jsonl ctc.jsonl ctc_vocab.jsonl; do cmp $work/data/$f build/s25/data/$f; done
for s in ctc_alignment pre_alignment core_cocktail_stage1 core_cocktail_stage2 dpo srh_refine; do
  cmp $work/runs/$s/final/model.safetensors build/s25/runs/$s/final/model.safetensors
done
cmp $work/runs/merged/model.safetensors build/s25/runs/merged/model.safetensors
for f in speech.safetensors backbone_delta.safetensors; do cmp build/s26-out/$f funaudiochat/assets/default_model/$f; done

# 2. Text in by stage (the Core-Cocktail table); first 100 items of each dev set, the build's 1,749
#    training questions excluded. The base backbone's row is session 21's run (same items).
ev() { funaudiochat eval --model "$1" --sets "$2" --modes "$3" --name "$4" --out "$res/$4" --limit 100 \
         --batch-size 16 --exclude-ids $work/questions.jsonl --no-progress --max-seconds 8 "${@:5}"; }
ev $work/runs/core_cocktail_stage1/final llama_questions,web_questions,triviaqa text s26_stage1
ev $work/runs/merged llama_questions,web_questions,triviaqa text s26_merged
ev $work/runs/core_cocktail_stage2/final llama_questions,web_questions,triviaqa text s26_core_cocktail_stage2
ev $work/runs/dpo/final llama_questions,web_questions,triviaqa text s26_dpo
funaudiochat eval-report --out $R/text_by_stage.md build/eval_s21/s21_base $res/s26_stage1 $res/s26_merged \
  $res/s26_core_cocktail_stage2 $res/s26_dpo

# 3. The no-merge ablation: stage 2 and DPO again from stage 1 without the merge (into $work/runs_nomerge),
#    then its text in and LLaMA-Q s2t.
funaudiochat -v build-default --out build/s26-out --work $work --preset cpu-base --benchdata ../shared/benchdata \
  --ablation-no-merge
cp $work/timings_nomerge.json $R/timings_nomerge.json
ev $work/runs_nomerge/dpo/final llama_questions,web_questions,triviaqa text s26_nomerge_dpo
ev $work/runs_nomerge/dpo/final llama_questions s2t s26_nomerge_dpo_s2t
cp $res/s26_nomerge_dpo/report.md $R/report_s26_nomerge_dpo.md
cp $res/s26_nomerge_dpo_s2t/report.md $R/report_s26_nomerge_dpo_s2t.md

# 4. Where each stage's training loss levels off (means over tenths of each run). This build's metrics
#    equal session 25's in every field but tokens_per_s; the CTC stage's are copied here.
cp $work/runs/ctc_alignment/metrics.jsonl $R/ctc_alignment_metrics.jsonl
python - <<'PY'
import json
for s in ["ctc_alignment", "pre_alignment", "core_cocktail_stage1", "core_cocktail_stage2", "dpo"]:
    d = "session26" if s == "ctc_alignment" else "session25"
    rows = [json.loads(x) for x in open(f"docs/results/default-model/{d}/{s}_metrics.jsonl") if x.strip()]
    rows = [r for r in rows if r.get("loss") is not None]
    key = "text_loss" if rows[0].get("text_loss") is not None else "loss"
    k = max(1, len(rows) // 10)
    print(s, len(rows), " ".join(f"{f:.1f}:{sum(r[key] for r in rows[int(len(rows) * f) - k:int(len(rows) * f)]) / k:.3f}"
                                 for f in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)))
PY

# 5. The answers stage at batch 64 (the build uses 32): same answers? how long?
python docs/results/default-model/session26/answers_batch.py 64 $res/answers_b64.jsonl > $R/answers_batch64.json
