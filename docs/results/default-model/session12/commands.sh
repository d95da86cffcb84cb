#!/usr/bin/env bash
# Session 12 (2026-11-27): today's recipe (vocab_ctc, CTC stage with vocabulary sentences, speech-in
# path frozen after it, --train-new-tokens) trained at the GPU preset's size on a lent H200, from data
# made on the 2-core CPU. docs/default-model-history.md, "GPU rebuild with today's recipe (session 12)".
# Run from the repository root.
set -euo pipefail
work=build/s12; out=build/s12-out; res=build/eval_s12

# 1. Here (CPU): the data stages and the init model of the GPU preset. The command was stopped once
#    the CTC stage began; everything it needs on the GPU is cached in $work by then.
funaudiochat build-default --preset gpu --train-new-tokens --out "$out" --work "$work" --benchdata ../shared/benchdata

# 2. The packs: the GGUF, the init model without the pip backbone, the data, the wheels the GPU machine
#    lacks (pip download, as the device README says: soundfile, cffi, pycparser, soxr, gguf,
#    transformers 5.24.0), spread over folders of at most 55 MiB.
python scripts/device_build_default.py pack "$work" .packs --wheels .whl --cap 55

# 3. On the GPU machine (the device tool), one call per pack; each copies its folder into /root/fac/pack,
#    and the last one also runs the build (FAC_SCALE=0.2) with text-in by stage and the no-merge ablation:
#      cp -a .packs/pK/. /root/fac/pack/
#      python3 -m pip install -q --no-index --no-deps --target /tmp/site /root/fac/pack/wheels/*.whl
#      PYTHONPATH=/tmp/site:$PWD FUNAUDIOCHAT_CACHE=/root/fac/cache FAC_SCALE=0.2 FAC_DEADLINE=540 \
#        python3 scripts/device_build_default.py
#    It returns the package in parts, its manifest, logs.tgz (recipes, stage metrics, timings),
#    eval.tgz (text-in reports by stage, the ablation's logs) and device.log. The deadline stopped it
#    after the text-in of dpo, stage1 and merged; one more call on the warm machine made the other two:
#      PYTHONPATH=/tmp/site:$PWD:$PWD/scripts FUNAUDIOCHAT_CACHE=/root/fac/cache python3 -c "import \
#        device_build_default as d; d._text_eval('stage2', d.WORK/'runs/core_cocktail_stage2/final'); \
#        d._text_eval('base', d.WORK/'init')"

# 4. Here again: the package from its parts (sha256 checked against the manifest), as a model folder.
mkdir -p "$out"; f=/work/.device/4   # where the device tool put the first call's files
cat $f/backbone_delta.safetensors.part* > "$out/backbone_delta.safetensors"
cat $f/speech.safetensors.part* > "$out/speech.safetensors"; cp $f/manifest.json "$out/"
python -c 'import sys; from funaudiochat.default_model.package import load_default_model as l; m, t = l(assets_dir=sys.argv[1]); m.save_pretrained(sys.argv[2]); t.save_pretrained(sys.argv[2])' "$out" build/s12-pkg-model
funaudiochat eval-report build/s12-dev/eval/text_{base,stage1,merged,stage2,dpo} --out docs/results/default-model/session12/text_by_stage.md

# 5. The package on the CPU, as scripts/eval_build_package.sh measures it (same items and TTS cache as
#    the shipped model's rerun, shipped_qa.md).
export OMP_NUM_THREADS=2
common=(--exclude-ids "$work/questions.jsonl" --no-progress --tts-cache build/eval/tts --max-seconds 8)
funaudiochat eval --model default --sets llama_questions,web_questions,triviaqa --modes text,s2t --name shipped \
  --out $res/shipped_qa --limit 100 --batch-size 16 "${common[@]}"
funaudiochat eval --model build/s12-pkg-model --sets llama_questions,web_questions,triviaqa --modes text,s2t \
  --name gpu_s12 --out $res/gpu_qa --limit 100 --batch-size 16 "${common[@]}"
python scripts/ctc_transcribe.py build/s12-pkg-model ../shared/benchdata/llama_questions/dev.jsonl --out $res/ctc_gpu.jsonl
funaudiochat eval --model build/s12-pkg-model --sets llama_questions --modes s2t --name all210 --out $res/all210_gpu --batch-size 16 --no-progress --max-seconds 8
funaudiochat eval --model build/s12-pkg-model --sets llama_questions,web_questions,triviaqa --modes s2s \
  --name gpu_s12_s2s --out $res/gpu_qa_s2s --limit 20 --batch-size 8 "${common[@]}"
