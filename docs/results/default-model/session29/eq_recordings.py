"""Session 29: the real LLaMA-Questions recordings with the TTS questions' average spectrum.

The real recordings carry about 10 dB more below 250 Hz and 10-15 dB less from 2.5 to 7 kHz than the
build's synthesized questions.  Each recording is filtered by the smoothed difference of the two
average spectra (active frames only), so a readout can be scored on speech with the training data's
spectral balance.  Writes OUT/audio/*.wav and OUT/dev.jsonl.

    python docs/results/default-model/session29/eq_recordings.py WORK OUT
"""
import json
import shutil
import sys
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
from scipy.ndimage import uniform_filter1d

LLQ = Path("../shared/benchdata/llama_questions")


def mean_spectrum_db(files):
    acc = np.zeros(257)
    for f in files:
        w, _ = sf.read(f, dtype="float32")
        power = np.abs(librosa.stft(w, n_fft=512, hop_length=160)) ** 2
        energy = power.sum(0)
        active = power[:, energy > np.percentile(energy, 50)].mean(1)
        acc += active / active.mean()
    return 10 * np.log10(acc / len(files) + 1e-12)


work, out = Path(sys.argv[1]), Path(sys.argv[2])
real = sorted((LLQ / "audio").glob("*.wav"))
rows = [json.loads(line) for line in open(work / "data" / "ctc.jsonl")]
tts = [work / "data" / r["audio"] for r in rows if r["audio"].endswith("_q.wav")][:200]
gain_db = uniform_filter1d(mean_spectrum_db(tts) - mean_spectrum_db(real), 9)
gain_db[240:] = gain_db[239]  # the TTS has nothing near 8 kHz: do not lift the recordings' noise there
gain = 10 ** (np.clip(gain_db, -20, 20) / 20)
(out / "audio").mkdir(parents=True, exist_ok=True)
for f in real:
    w, sr = sf.read(f, dtype="float32")
    y = librosa.istft(librosa.stft(w, n_fft=512, hop_length=128) * gain[:, None], hop_length=128, length=len(w))
    y *= min(0.9, np.abs(w).max() + 0.3) / max(1e-6, np.abs(y).max())
    sf.write(out / "audio" / f.name, y, sr, subtype="PCM_16")
shutil.copy(LLQ / "dev.jsonl", out / "dev.jsonl")
print("gain every 500 Hz (dB):", " ".join(f"{g:.1f}" for g in gain_db[::16]))
