"""Session 29: the CTC stage's data with 1,749 more vocabulary sentences in place of the 1,749 noisy
question copies (same count, same voices).  The extra sentences are the vocabulary step's greedy
choice at target 6 over the pool minus the 2,000 the build already speaks, counting the build's CTC
transcripts and those 2,000 as known.  Writes OUT/{ctc_clean,ctc_vocab,ctc_vocab2}.jsonl (absolute
audio paths) and OUT/wav_vocab2/.

    python docs/results/default-model/session29/vocab_in_place_of_noisy.py WORK/data OUT
"""
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from funaudiochat.default_model.speech_data import TTSEngines, question_voice, safe_name, speak_cached
from funaudiochat.default_model.vocab_sentences import pool_sentences, select_sentences

src, out = Path(sys.argv[1]), Path(sys.argv[2])
ctc = [json.loads(line) for line in open(src / "ctc.jsonl")]
voc = [json.loads(line) for line in open(src / "ctc_vocab.jsonl")]
known = [r["text"] for r in ctc + voc]
used = {r["id"].removeprefix("vocab:") for r in voc}
pool = [s for s in pool_sentences("../shared/benchdata") if s.id not in used]
n = sum(1 for r in ctc if r["audio"].endswith("_q_noisy.wav"))
chosen = select_sentences(pool, known, n, target=6)
print(f"{n} noisy copies, {len(chosen)} sentences chosen", file=sys.stderr)
engines, rows = TTSEngines(), []
(out / "wav_vocab2").mkdir(parents=True, exist_ok=True)
for s in tqdm(chosen, desc="extra sentences"):
    engine, voice, speed = question_voice(s.id)
    name = f"wav_vocab2/{safe_name(s.id)}.wav"
    speak_cached(engines, out / name, s.text, engine, voice, speed)
    rows.append({"id": f"vocab2:{s.id}", "audio": str((out / name).resolve()), "text": s.text, "source": s.source})


def write(name, records):
    with open(out / name, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


write("ctc_vocab2.jsonl", rows)
write("ctc_clean.jsonl", [{**r, "audio": str((src / r["audio"]).resolve())} for r in ctc
                          if not r["audio"].endswith("_q_noisy.wav")])
write("ctc_vocab.jsonl", [{**r, "audio": str((src / r["audio"]).resolve())} for r in voc])
