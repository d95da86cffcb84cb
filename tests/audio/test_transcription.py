"""Transcription quality with Whisper tiny.en (greedy) on real LLaMA-Questions recordings.

Two paths are compared on the same three dev wavs:
* faster-whisper end to end (its own features and CTranslate2's encoder), the reference;
* our load_audio + log_mel + SpeechEncoder (converted weights), feeding CTranslate2's decoder.
If our features, conversion or encoder were wrong, the second path would produce garbage.
The WERs are printed (run with ``-s``); the equivalence tests are what prove the weights.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from funaudiochat.audio.features import log_mel
from funaudiochat.audio.io import load_audio
from funaudiochat.audio.whisper_weights import ct2_encoder_state_dict

ctranslate2 = pytest.importorskip("ctranslate2")
faster_whisper = pytest.importorskip("faster_whisper")
tokenizers = pytest.importorskip("tokenizers")
encoder_mod = pytest.importorskip("funaudiochat.modeling.encoder")
config_mod = pytest.importorskip("funaudiochat.config")


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(Levenshtein distance over words, number of reference words)."""
    r, h = _words(ref), _words(hyp)
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i] + [0] * len(h)
        for j, hw in enumerate(h, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1], len(r)


def test_word_errors():
    assert word_errors("What is the capital of France?", "what is the capital of france") == (0, 6)
    assert word_errors("a b c d", "a x c") == (2, 4)
    assert word_errors("a b", "a b c") == (1, 2)


def test_wer_faster_whisper_vs_our_encoder(tiny_en_dir, llama_items):
    items = llama_items[:3]
    fw = faster_whisper.WhisperModel(str(tiny_en_dir), device="cpu", compute_type="float32", cpu_threads=2)
    ref_hyps = []
    for it in items:
        segments, _ = fw.transcribe(str(it["path"]), beam_size=1, temperature=0.0, language="en",
                                    without_timestamps=True, condition_on_previous_text=False)
        ref_hyps.append(" ".join(s.text.strip() for s in segments))

    sd, hp = ct2_encoder_state_dict(tiny_en_dir)
    cfg = config_mod.FunAudioChatAudioEncoderConfig(
        **{**hp.config_kwargs(), "max_source_positions": hp.max_positions + 1}, n_window=1500, output_dim=8)
    enc = encoder_mod.SpeechEncoder(cfg).eval()
    enc.load_state_dict(sd, strict=False)
    tok = tokenizers.Tokenizer.from_file(str(tiny_en_dir / "tokenizer.json"))
    prompt = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]
    ct2 = ctranslate2.models.Whisper(str(tiny_en_dir), device="cpu", compute_type="float32")
    our_hyps = []
    for it in items:
        x = load_audio(it["path"])
        feats = log_mel(np.pad(x, (0, 480_000 - x.size)), 80)[None]  # the decoder expects a 30-s window
        with torch.no_grad():
            states, _ = enc.hidden_states(feats, torch.tensor([3000]))
        out = ct2.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(states.numpy())),
                           [prompt], beam_size=1, max_length=100)
        our_hyps.append(tok.decode(out[0].sequences_ids[0], skip_special_tokens=True).strip())

    ref_err = [word_errors(it["question"], h) for it, h in zip(items, ref_hyps)]
    our_err = [word_errors(it["question"], h) for it, h in zip(items, our_hyps)]
    n_words = sum(n for _, n in ref_err)
    wer_ref = sum(e for e, _ in ref_err) / n_words
    wer_ours = sum(e for e, _ in our_err) / n_words
    for it, a, b in zip(items, ref_hyps, our_hyps):
        print(f"{it['audio_file']}: ref={it['question']!r} faster-whisper={a!r} ours={b!r}")
    print(f"WER tiny.en greedy on {len(items)} LLaMA-Questions wavs ({n_words} words): "
          f"faster-whisper {wer_ref:.1%}, our features+encoder -> CT2 decoder {wer_ours:.1%}")
    assert wer_ref <= 0.35, ref_hyps  # sanity: the reference recogniser works on these recordings
    assert wer_ours <= wer_ref + 0.05, (our_hyps, ref_hyps)
