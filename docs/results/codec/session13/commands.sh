# Session 13 (2026-11-27, 2-core CPU, no GPU): the speech codec on real answer text, and the fine-tuned
# detokenizer that replaced the shipped one. Run from the repository root. build/s12 is the work dir of
# session 12's `funaudiochat build-default --preset gpu --train-new-tokens` (its data stages only are needed:
# answers.jsonl, data/answer_tokens.jsonl, data/wav/*_a.wav, data/ctc_vocab.jsonl, data/wav_vocab/).
set -euo pipefail
C=/tmp/codec
shipped=funaudiochat/assets/speech_detokenizer   # the detokenizer before this session (git show 68c4ffc:...)

# 1. The build's spoken answers (piper joe) as extra utterances; about 1 in 8 held out by a salted id hash.
python -m funaudiochat.audio.train_codec extra-from-build --build-work build/s12 --out $C/answers   # 1515 + 234

# 2. The build's vocabulary sentences spoken by piper joe (521 of the 2,000; benchmark dev texts that no
#    evaluation of the model reads: LibriSpeech test transcripts and MMLU-Pro questions), tokens computed.
python - <<'EOF'
import json
from pathlib import Path
d = Path("build/s12/data").resolve()
rows = [json.dumps({"id": r["id"], "audio": str(d / r["audio"]), "voice": "joe", "text": r["text"]})
        for r in map(json.loads, open(d / "ctc_vocab.jsonl")) if r["tts"]["engine"] == "piper"]
Path("/tmp/codec/vocab_joe.jsonl").write_text("\n".join(rows) + "\n")
EOF

# 3. 20 held-out grammar sentences (train_codec.eval_sentences) per training voice, for the in-domain check.
mkdir -p $C/grammar && (cd $C/grammar && python - <<'EOF'
import json, soundfile as sf
from funaudiochat.audio.train_codec import eval_sentences, train_sentences
from funaudiochat.audio.voices import TRAINING_VOICES
from funaudiochat.speech.tts import create_engine
texts, engines = eval_sentences(20, exclude=set(train_sentences(1000))), {}
for voice, (eng, ev) in TRAINING_VOICES.items():
    engines.setdefault(eng, create_engine(eng))
    rows = []
    for i, t in enumerate(texts):
        a, sr = engines[eng].synthesize(t, voice=ev, sample_rate=16000)
        sf.write(f"{voice}_{i:02d}.wav", a, sr)
        rows.append(json.dumps({"audio": f"{voice}_{i:02d}.wav", "voice": voice, "text": t}))
    open(f"{voice}.jsonl", "w").write("\n".join(rows) + "\n")
EOF
)

# 4. Fine-tune the shipped detokenizer on (1) + (2): 40 wall-clock minutes, 2 threads, 859 steps of 16.
python -m funaudiochat.audio.train_codec detokenizer --work $C/work --tokenizer funaudiochat/assets/speech_tokenizer \
  --init $shipped --extra $C/answers/train.jsonl --extra $C/vocab_joe.jsonl --out $C/detok_ft40 \
  --minutes 40 --lr 5e-4 --warmup 50 --batch 16 --threads 2

# 5. Round trip (tokens -> detokenizer -> faster-whisper base) against the source audio's own ASR.
#    base_*: the detokenizer before (1 thread, beside step 4); ft40_*: after (2 threads).
for m in answers/heldout.jsonl grammar/joe.jsonl grammar/espeak_f.jsonl grammar/espeak_m.jsonl; do
  n=$(basename $(dirname $m))_$(basename $m .jsonl)
  python -m funaudiochat.audio.train_codec evaluate-extra --manifest $C/$m --detokenizer $shipped --n 40 --report base_$n.json
  python -m funaudiochat.audio.train_codec evaluate-extra --manifest $C/$m --detokenizer $C/detok_ft40 --n 40 --report ft40_$n.json
done

# 6. The shipped model's spoken answers through the new detokenizer (same items and settings as the
#    session-6 s2s rows in docs/default-model-history.md).
funaudiochat eval --model default --sets llama_questions,web_questions,triviaqa --modes s2s --name shipped_s2s_ft40 \
  --out build/eval_s13/shipped_s2s_ft40 --limit 20 --batch-size 8 --exclude-ids build/s12/questions.jsonl \
  --no-progress --tts-cache build/eval/tts --max-seconds 8 --detokenizer-path $C/detok_ft40
# ... and through the detokenizer before this session, LLaMA-Questions only (same written replies: 20 of 20).
mkdir -p $C/detok_old
git show 68c4ffc:funaudiochat/assets/speech_detokenizer/flow.safetensors > $C/detok_old/flow.safetensors
git show 68c4ffc:funaudiochat/assets/speech_detokenizer/detokenizer.json > $C/detok_old/detokenizer.json
funaudiochat eval --model default --sets llama_questions --modes s2s --name shipped_s2s_old \
  --out build/eval_s13/shipped_s2s_old --limit 20 --batch-size 8 --exclude-ids build/s12/questions.jsonl \
  --no-progress --tts-cache build/eval/tts --max-seconds 8 --detokenizer-path $C/detok_old
