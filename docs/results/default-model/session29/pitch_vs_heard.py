"""Session 29: median pitch (librosa.yin over the loudest 40 % of frames) and speaking rate of each
real LLaMA-Questions recording, against the share of its content words a readout heard.

    python docs/results/default-model/session29/pitch_vs_heard.py ROWS.jsonl   # rows of scripts/ctc_transcribe.py
"""
import json
import sys

import jiwer
import librosa
import numpy as np
import soundfile as sf

sys.path.insert(0, "scripts")
from ctc_transcribe import heard_share  # noqa: E402

from funaudiochat.evaluation.normalize import normalize_text  # noqa: E402

rows = {r["id"]: r for r in map(json.loads, open(sys.argv[1]))}
dev = [json.loads(line) for line in open("../shared/benchdata/llama_questions/dev.jsonl")]
res = []
for d in dev:
    w, sr = sf.read("../shared/benchdata/llama_questions/audio/" + d["audio_file"], dtype="float32")
    f0 = librosa.yin(w, fmin=60, fmax=400, sr=sr, frame_length=1024)
    rms = librosa.feature.rms(y=w, frame_length=1024, hop_length=256)[0]
    n = min(len(f0), len(rms))
    f0, rms = f0[:n], rms[:n]
    r = rows[d["id"]]
    ref, hyp = normalize_text(r["reference"]), normalize_text(r["ctc"])
    res.append((np.median(f0[rms > np.percentile(rms, 60)]), heard_share(r["reference"], r["ctc"]),
                jiwer.wer(ref, hyp), len(ref.split()) / (len(w) / sr)))
res = np.array(res)
print("median pitch, 10/25/50/75/90th percentile (Hz):", np.percentile(res[:, 0], [10, 25, 50, 75, 90]).round())
for name, col, edges in (("pitch (Hz)", 0, (0, 140, 180, 230, 500)), ("words per second", 3, (0, 2, 2.5, 3, 9))):
    for lo, hi in zip(edges, edges[1:]):
        m = (res[:, col] >= lo) & (res[:, col] < hi)
        if m.any():
            print(f"{name} {lo}-{hi}: n={m.sum()} content words heard {res[m, 1].mean():.3f} WER {res[m, 2].mean():.3f}")
