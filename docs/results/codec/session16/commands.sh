#!/usr/bin/env bash
# Session 16 (2026-11-27): the detokenizer trained on the GPU on 5,036 utterances of real text (342.8 min of
# piper joe), 6.5 minutes on a lent H100, instead of session 13's 40 CPU-minutes on 2,036. Run from the repository
# root. Needs session 12's build work dir (build/s12) and session 15's read-aloud turns (build/ra/data, made by
# `funaudiochat build-default --read-aloud 3000`, or `scripts/srh_layout_experiment.py extra --read-aloud 3000`).
set -euo pipefail
C=build/codec16
E="python -m funaudiochat.audio.train_codec"
T=funaudiochat/assets/speech_tokenizer
# 1. The training utterances: the build's answers minus session 13's held-out ones (1,515), the vocabulary sentences
#    piper joe spoke (521) and the 3,000 read-aloud sentences; none of them is a held-out answer.
$E extra-from-build --build-work build/s12 --out $C/answers                       # 1,515 train + 234 held out
python - <<'PY'
import json
from pathlib import Path
out, d, ra = Path("build/codec16"), Path("build/s12/data").resolve(), Path("build/ra/data").resolve()
rows = [{"id": r["id"], "audio": str(d / r["audio"]), "voice": "joe", "text": r["text"]}
        for r in map(json.loads, open(d / "ctc_vocab.jsonl")) if r["tts"]["engine"] == "piper"]
toks = {r["id"]: r["tokens"] for r in map(json.loads, open(ra / "read_aloud_tokens.jsonl"))}
for r in map(json.loads, open(ra / "read_aloud.jsonl")):
    rid = r["id"].removeprefix("read:")
    rows.append({"id": rid, "audio": str(ra / r["meta"]["recording"]), "voice": "joe",
                 "text": [m for m in r["messages"] if m["role"] == "assistant"][-1]["content"], "tokens": toks[rid]})
rows = [json.loads(line) for line in open(out / "answers/train.jsonl")] + rows
# three files of about equal audio, so that each fits one device call (64 MiB with the working tree)
size = [Path(r["audio"]).stat().st_size for r in rows]
parts, acc, cur = [[], [], []], 0, 0
for r, s in zip(rows, size):
    if acc > sum(size) * (cur + 1) / 3 and cur < 2:
        cur += 1
    parts[cur].append(r)
    acc += s
for i, p in enumerate(parts, 1):
    (out / f"part{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in p))
PY
for i in 1 2 3; do $E examples --extra $C/part$i.jsonl --tokenizer $T --out $C/ex$i.npz --mel-bits 8; done  # 43-44 MB each
# 2. On the GPU (four device calls: each pack, and the transformers wheel the image lacks, carried separately, with
#    funaudiochat/assets/default_model/*.safetensors moved out of the working tree meanwhile):
#    build/gpuA/ex1.npz, build/gpuB/ex2.npz, build/gpuC/ex3.npz, then
#    bash docs/results/codec/session16/device_train.sh 6.5      -> ft_lr5e-4, ft_lr1e-3, scratch_lr2e-3
#    (the three models came back into $C/gpu/)
# 3. Round trip on session 13's 40 held-out answers, on the CPU (faster-whisper base, int8, beam 5), and the
#    shipped detokenizer again (the same 74.04 % as in session 13: the measurement is deterministic).
for v in ft_lr1e-3 ft_lr5e-4 scratch_lr2e-3; do
  $E evaluate-extra --manifest $C/answers/heldout.jsonl --detokenizer $C/gpu/$v --n 40 --report $C/gpu/eval_heldout_$v.json
done
$E evaluate-extra --manifest $C/answers/heldout.jsonl --n 40 --report $C/gpu/eval_heldout_shipped.json  # before 78defce
# 4. The 20 held-out grammar sentences per voice (docs/results/codec/session13/commands.sh, step 3, into $C/grammar)
#    and session 14's 40 held-out replies (build/pace/truth.jsonl), for ft_lr1e-3.
for v in joe espeak_f espeak_m; do
  $E evaluate-extra --manifest $C/grammar/$v.jsonl --detokenizer $C/gpu/ft_lr1e-3 --n 20 --report $C/gpu/eval_grammar_${v}_ft_lr1e-3.json
done
$E evaluate-extra --manifest build/pace/truth.jsonl --detokenizer $C/gpu/ft_lr1e-3 --n 40 --report $C/gpu/eval_truth_ft_lr1e-3.json
# 5. ft_lr1e-3 forgot the espeak voices, so the grammar speech of all three voices joins a third of the real text.
$E data --work $C/grammar_train --n-joe 600 --n-espeak 200                            # 1,000 utterances, 7 min here
$E examples --grammar-work $C/grammar_train --tokenizer $T --out build/gpuD/grammar.npz --mel-bits 8   # 19.5 MB
cat $C/part1.jsonl $C/part2.jsonl $C/part3.jsonl | awk 'NR % 3 == 1' > $C/mix_third.jsonl             # 1,679
$E examples --extra $C/mix_third.jsonl --tokenizer $T --out build/gpuE/ex_mix_third.npz --mel-bits 8   # 43.4 MB
# 6. On the GPU (two calls: the wheel, build/gpuD with grammar.npz and a copy of $C/gpu/ft_lr1e-3; then build/gpuE):
#    bash docs/results/codec/session16/device_train_mix.sh 3.0     -> mix_from_ft, mix_from_shipped (into $C/gpu2/)
for m in grammar/espeak_f answers/heldout grammar/joe grammar/espeak_m; do
  n=$(basename $m); [ $n = heldout ] || n=grammar_$n; [ $n = heldout ] && k=40 || k=20
  for v in mix_from_ft mix_from_shipped; do   # (mix_from_shipped: stopped after the first two)
    $E evaluate-extra --manifest $C/$m.jsonl --detokenizer $C/gpu2/$v --n $k --threads 1 --report $C/gpu2/eval_${n}_$v.json
  done
done
$E evaluate-extra --manifest build/pace/truth.jsonl --detokenizer $C/gpu2/mix_from_ft --n 40 --report $C/gpu2/eval_truth_mix_from_ft.json
# 7. The capped figures of the reports written before evaluate-extra computed them (steps 3-4):
#    (also run on docs/results/default-model/session14/eval_truth.json, the session-13 detokenizer on session 14's
#    replies, without writing it back: 67.86 % plain, 53.97 % capped)
python - $C/gpu/eval_*.json <<'PY'
# The capped figures for reports written before evaluate-extra computed them (same functions, same rows).
import json, sys
from funaudiochat.speech.wer import capped_corpus_wer, word_errors
for f in sys.argv[1:]:
    r = json.load(open(f))
    if "wer_roundtrip_capped" in r:
        continue
    src = [word_errors(x["text"], x["source_asr"]) for x in r["rows"]]
    rt = [word_errors(x["text"], x["roundtrip_asr"]) for x in r["rows"]]
    for x, (es, n), (er, _) in zip(r["rows"], src, rt):
        x.update(words=n, errors_source=es, errors_roundtrip=er)
    rows = r.pop("rows")
    r.update(wer_source_capped=round(100 * capped_corpus_wer(src), 2), wer_roundtrip_capped=round(100 * capped_corpus_wer(rt), 2),
             utterances_over_100={"source": sum(e > n for e, n in src), "roundtrip": sum(e > n for e, n in rt)}, rows=rows)
    open(f, "w").write(json.dumps(r, indent=2) + "\n")
    print(f, r["wer_roundtrip"], r["wer_roundtrip_capped"])
PY
# 8. mix_from_ft is shipped: funaudiochat/assets/speech_detokenizer/{flow.safetensors,detokenizer.json}.
cp $C/gpu2/mix_from_ft/flow.safetensors $C/gpu2/mix_from_ft/detokenizer.json funaudiochat/assets/speech_detokenizer/
#    then its manifest's training "text" and "init" were rewritten to name their sources (device paths before).
