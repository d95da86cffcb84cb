"""Measure TTS speed and intelligibility (the numbers in docs/tts-data.md).

For each engine setting it synthesizes the given texts once, times synthesis (real-time
factor = synthesis seconds / audio seconds, engine loading excluded), transcribes with local
Whisper and reports corpus WER (sum of word edits / sum of reference words) and the share of
utterances whose own WER is below the acceptance threshold.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from funaudiochat.speech.asr import LocalASR
from funaudiochat.speech.synthesize import plan_attempts, read_items
from funaudiochat.speech.tts import BUILTIN_VOICES, PiperTTS, TTSEngine, create_engine
from funaudiochat.speech.wer import word_errors

logger = logging.getLogger(__name__)

__all__ = ["EngineReport", "benchmark_engine", "main"]


@dataclass
class EngineReport:
    setting: str
    utterances: int
    audio_seconds: float
    synth_seconds: float
    rtf: float
    wer: dict[str, float]
    acceptance: dict[str, float]
    asr_rtf: dict[str, float]


def benchmark_engine(
    setting: str,
    engine: TTSEngine,
    texts: Sequence[tuple[str, str]],
    asr: LocalASR,
    asr_models: Sequence[str],
    voice_for: dict[str, str] | None = None,
    speed: float = 1.0,
    threshold: float = 0.2,
    beam_size: int = 5,
) -> EngineReport:
    """Synthesize `texts` ((id, text) pairs) with one engine setting and score it with each ASR model."""
    audios = []
    synth = 0.0
    engine.synthesize(texts[0][1], voice=(voice_for or {}).get(texts[0][0]), speed=speed)  # warm-up, untimed
    for item_id, text in texts:
        voice = (voice_for or {}).get(item_id)
        t0 = time.perf_counter()
        audio, sr = engine.synthesize(text, voice=voice, speed=speed)
        synth += time.perf_counter() - t0
        audios.append(audio)
    seconds = sum(a.shape[0] for a in audios) / 16000
    wer, acc, asr_rtf = {}, {}, {}
    for model in asr_models:
        asr.transcribe(audios[0], model=model, beam_size=beam_size)  # load outside the timing
        errors = words = ok = 0
        t0 = time.perf_counter()
        hyps = [asr.transcribe(a, model=model, beam_size=beam_size) for a in audios]
        asr_rtf[model] = round((time.perf_counter() - t0) / seconds, 3)
        for (item_id, text), hyp in zip(texts, hyps):
            e, n = word_errors(text, hyp)
            errors, words, ok = errors + e, words + n, ok + int(e / max(n, 1) < threshold)
            if e:
                logger.info("%s [%s] %s: %r -> %r", setting, model, item_id, text, hyp)
        wer[model] = round(errors / words, 4)
        acc[model] = round(ok / len(texts), 4)
    return EngineReport(
        setting, len(texts), round(seconds, 2), round(synth, 3), round(synth / seconds, 4), wer, acc, asr_rtf
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m funaudiochat.speech.benchmark", description=__doc__)
    p.add_argument("input", type=Path, help="JSONL with the texts")
    p.add_argument("--text-field", default="question")
    p.add_argument("--n", type=int, default=20, help="first N items")
    p.add_argument("--asr-models", default="base,tiny.en")
    p.add_argument("--seed", type=int, default=0, help="seed for the varied-espeak voice draw")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    texts = [(i.id, i.text) for i in read_items(args.input, args.text_field)[: args.n]]
    models = [m for m in args.asr_models.split(",") if m]
    asr = LocalASR()
    espeak_voices = {"espeak": BUILTIN_VOICES["espeak"]}
    varied = {i: plan_attempts(i, args.seed, espeak_voices, (1.0,), 1)[0][1] for i, _ in texts}
    espeak = create_engine("espeak")
    t0 = time.perf_counter()
    piper = create_engine("piper")
    logger.info("piper voice load: %.2f s", time.perf_counter() - t0)
    runs = [
        ("piper joe (noise 0, deterministic)", piper, None, 1.0),
        ("piper joe (voice-file noise 0.667/0.8)", PiperTTS(noise_scale=0.667, noise_w_scale=0.8), None, 1.0),
        ("espeak en-us 150 wpm", espeak, None, 1.0),
        ("espeak en-us 175 wpm", create_engine("espeak", base_wpm=175), None, 1.0),
        ("espeak varied voices 150 wpm", espeak, varied, 1.0),
    ]
    reports = [benchmark_engine(name, eng, texts, asr, models, vf, sp) for name, eng, vf, sp in runs]
    for r in reports:
        print(json.dumps(asdict(r)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
