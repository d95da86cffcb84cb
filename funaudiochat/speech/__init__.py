"""Offline speech tools: TTS for synthetic training/eval data, local Whisper ASR, ASR-WER filtering.

Heavy dependencies (piper, onnxruntime, faster-whisper) are imported only when an engine or
ASR object is created, so importing this package is cheap.
"""

from funaudiochat.speech.asr import ASR_MODELS, LocalASR, MissingPackageError, assemble_base_model, locate_model
from funaudiochat.speech.audio import TARGET_SR, add_noise_at_snr, load_audio, resample, write_wav_atomic
from funaudiochat.speech.synthesize import SynthConfig, SynthStats, main, read_items, synthesize_dataset
from funaudiochat.speech.tts import BUILTIN_VOICES, ENGINE_NAMES, EspeakTTS, PiperTTS, TTSEngine, create_engine
from funaudiochat.speech.wer import normalize_text, wer, word_errors

__all__ = [
    "ASR_MODELS",
    "BUILTIN_VOICES",
    "ENGINE_NAMES",
    "TARGET_SR",
    "EspeakTTS",
    "LocalASR",
    "MissingPackageError",
    "PiperTTS",
    "SynthConfig",
    "SynthStats",
    "TTSEngine",
    "add_noise_at_snr",
    "assemble_base_model",
    "create_engine",
    "load_audio",
    "locate_model",
    "main",
    "normalize_text",
    "read_items",
    "resample",
    "synthesize_dataset",
    "wer",
    "word_errors",
    "write_wav_atomic",
]
