#!/usr/bin/env bash
# The results tables of docs/default-model-history.md and docs/evaluation.md: `funaudiochat eval` over the
# build's stage checkpoints and the shipped model, on dev items the build never trained on.
#
#   bash scripts/eval_default_model.sh WORK_DIR RESULTS_DIR [N] [M]
#
# WORK_DIR is the `build-default --work` folder (run with --ablation-no-merge for the ablation rows);
# N items per QA set (default 100; S2S_N=40 with speech out), M per other set (default 20). Every run
# resumes, so rerunning after an interruption is cheap.
set -euo pipefail
work=${1:?work dir of build-default}; out=${2:?results folder}; n=${3:-100}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out"
qa=llama_questions,web_questions,triviaqa
common=(--exclude-ids "$work/questions.jsonl" --limit "$n" --no-progress --batch-size 16)

# 1. Text in: the backbone's knowledge after each stage (base = the pip backbone, untouched by
#    pre-alignment, which freezes it), with and without the Core-Cocktail merge.
declare -A stages=(
  [base]="$work/init" [stage1]="$work/runs/core_cocktail_stage1/final" [merged]="$work/runs/merged"
  [stage2]="$work/runs/core_cocktail_stage2/final" [dpo]="$work/runs/dpo/final"
  [nomerge_stage2]="$work/runs_nomerge/core_cocktail_stage2/final" [nomerge_dpo]="$work/runs_nomerge/dpo/final"
)
for name in base stage1 merged stage2 dpo nomerge_stage2 nomerge_dpo; do
  [ -f "${stages[$name]}/config.json" ] || { echo "skip $name: ${stages[$name]} not built" >&2; continue; }
  funaudiochat eval --model "${stages[$name]}" --sets $qa --modes text --max-seconds 8 --name "$name" \
    --out "$out/text_$name" "${common[@]}"
done
funaudiochat eval-report "$out"/text_{base,stage1,merged,stage2,dpo} --out "$out/text_by_stage.md"
[ -d "$out/text_nomerge_dpo" ] && funaudiochat eval-report "$out"/text_{base,stage1,nomerge_stage2,nomerge_dpo} \
  --out "$out/text_by_stage_nomerge.md"

# 2. The shipped model (fp16 package): spoken QA with text out, then with speech out (fewer items:
#    each spoken answer is synthesized and transcribed) and the ASR-WER of the spoken answers.
funaudiochat eval --model default --sets $qa --modes text,s2t --max-seconds 8 --name shipped \
  --tts-cache "$out/tts" --out "$out/shipped_qa" "${common[@]}"
funaudiochat eval --model default --sets $qa --modes s2s --max-seconds 8 --name shipped_s2s \
  --tts-cache "$out/tts" --out "$out/shipped_qa_s2s" --exclude-ids "$work/questions.jsonl" --limit "${S2S_N:-40}" \
  --no-progress --batch-size 8

# 2b. Transcription of real human speech: LLaMA-Questions' recordings, with the question as the
#     reference (a set in the benchmark JSONL format, derived here; no code knows about it).
data=${FUNAUDIOCHAT_BENCHDATA:-$(dirname "$0")/../../shared/benchdata}
mkdir -p "$out/sets/llama_questions_asr"
python3 - "$data/llama_questions/dev.jsonl" "$out/sets/llama_questions_asr/dev.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps({"id": r["id"], "reference": r["question"], "audio_file": r["audio_file"],
                            "source": "LLaMA-Questions recordings, question text as the reference"}) + "\n")
PY
funaudiochat eval --model default --sets llama_questions_asr --modes s2t --data-root "$out/sets" \
  --audio-root "$data/llama_questions" --name shipped --out "$out/shipped_asr" --limit "$n" --no-progress --batch-size 16

# 3. Every other dev set that runs offline, text and speech in (fewer items: CPU time).
m=${4:-20}
funaudiochat eval --model default --sets openbookqa,mmlu_pro_mmsu_domains,ifeval,advbench,alpaca_eval,bfcl,speechfc_bfcl_single,acebench_en,acebench_zh,librispeech_test_clean \
  --modes text,s2t --max-seconds 20 --name shipped --tts-cache "$out/tts" --out "$out/shipped_other" \
  --exclude-ids "$work/questions.jsonl" --limit "$m" --no-progress --batch-size 16

# 4. Speech out on the other sets (5 items each), and AlpacaEval scored by a local judge: the
#    SmolLM2 backbone itself (an approximation of AlpacaEval's GPT-4 judge, and a weak one).
judge=$(python3 -c "from funaudiochat.pretrained import smollm2_backbone_dir; print(smollm2_backbone_dir())")
funaudiochat eval --model default --sets openbookqa,mmlu_pro_mmsu_domains,ifeval,advbench,bfcl,speechfc_bfcl_single,acebench_en \
  --modes s2s --max-seconds 12 --name shipped_s2s --tts-cache "$out/tts" --out "$out/shipped_other_s2s" \
  --exclude-ids "$work/questions.jsonl" --limit "${S2S_OTHER_N:-5}" --no-progress --batch-size 8
funaudiochat eval --model default --sets alpaca_eval --modes text,s2t,s2s --max-seconds 12 --judge "$judge" \
  --name shipped_judged --tts-cache "$out/tts" --out "$out/shipped_alpaca" --exclude-ids "$work/questions.jsonl" \
  --limit "$m" --no-progress --batch-size 8
