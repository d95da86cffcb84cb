"""Streaming synthesis: turn speech tokens into audio chunks while the LLM is still generating them.

:class:`FlowDetokenizerStream` (the embedded detokenizer) works on a bounded window:

* **Look-ahead.** Mel frame f is final once the tokens its encoders read are known: the token encoder
  reads ``token_lookahead`` tokens ahead, the mel-rate encoder ``mel_right`` frames ahead, and the flow
  estimator is causal.  Audio sample s is final once the vocoder has ``receptive_frames`` mel frames on
  its right.  Only final samples are emitted (plus a short held-back overlap, below).
* **Bounded left context.** Each chunk recomputes mel from a window starting ``context_frames`` before
  the first new frame (enough for the ODE's chained causal receptive field), and runs the vocoder from
  ``receptive_frames`` before it.  Cost per chunk therefore does not grow with the answer's length, and
  old tokens are dropped.
* **Cross-fade.** The last ``crossfade`` samples of every chunk are held back; the next chunk recomputes
  them and blends old and new with a raised-cosine ramp, so a chunk seam never steps, even where the
  bounded window makes the two computations differ slightly.
* **First chunk** as soon as ``first_chunk_tokens`` (default 10 = 0.4 s) tokens are in; then one chunk
  per ``chunk_tokens`` new tokens.

With the defaults the streamed waveform equals offline synthesis to float rounding (tested:
max |diff| < 1e-3 with HiFi-GAN; see docs/speech-codec.md).
"""

from __future__ import annotations

import abc
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from funaudiochat.audio.detokenizer import check_tokens, frames_for_tokens, token_of_frame
from funaudiochat.audio.vocoder import MEL

if TYPE_CHECKING:
    from funaudiochat.audio.detokenizer import CosyVoiceDetokenizer, FlowMatchingDetokenizer

logger = logging.getLogger(__name__)

__all__ = ["DetokenizerStream", "FlowDetokenizerStream", "CosyVoiceStream", "raised_cosine"]


def raised_cosine(n: int) -> np.ndarray:
    """Fade-in ramp of n samples from ~0 to ~1 (fade-out is 1 - ramp); the pair sums to exactly 1."""
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)


class DetokenizerStream(abc.ABC):
    """Incremental detokenizer for one utterance: ``push`` tokens as they come, ``flush`` at the end."""

    sample_rate: int

    @abc.abstractmethod
    def push(self, tokens: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Add tokens; return the audio chunks (float32) that became final, possibly none."""

    @abc.abstractmethod
    def flush(self) -> np.ndarray:
        """No more tokens: return the rest of the audio. The stream cannot be used afterwards."""


class FlowDetokenizerStream(DetokenizerStream):
    """Chunked synthesis with :class:`FlowMatchingDetokenizer`; see the module docstring."""

    def __init__(self, detok: FlowMatchingDetokenizer, voice: str | None = None, first_chunk_tokens: int = 10,
                 chunk_tokens: int = 10, context_frames: int | None = None, crossfade: int = 256) -> None:
        self.detok = detok
        self.speaker = detok.voice_bank.index(voice)  # unknown voice -> ValueError now, not mid-stream
        cfg = detok.model.cfg
        if first_chunk_tokens < 1 or chunk_tokens < 1:
            raise ValueError("first_chunk_tokens and chunk_tokens must be >= 1")
        if crossfade < 0 or crossfade > 4 * MEL.hop:
            raise ValueError(f"crossfade must be within [0, {4 * MEL.hop}] samples, got {crossfade}")
        self.first_chunk_tokens = first_chunk_tokens
        self.chunk_tokens = chunk_tokens
        self.crossfade = crossfade
        self.voc_frames = detok.vocoder.receptive_frames
        # Exactness needs: mel-encoder left edge + ODE chain (steps x estimator span) + vocoder context.
        exact = cfg.mel_left + cfg.steps * cfg.estimator_left + self.voc_frames
        self.context_frames = exact + 8 if context_frames is None else context_frames
        self.sample_rate = detok.sample_rate
        self._tokens: list[int] = []  # tokens[i] is absolute token self._offset + i
        self._offset = 0
        self._n = 0  # tokens received so far
        self._n_at_emit = 0
        self._emitted = 0  # absolute samples handed out
        self._tail: np.ndarray | None = None  # held-back samples [emitted, emitted + len(tail))
        self._done = False

    # -- bookkeeping
    def _final_frames(self, n_tokens: int) -> int:
        """Number of leading mel frames that no future token can change."""
        cfg = self.detok.model.cfg
        last_known = n_tokens - 1 - cfg.token_lookahead  # last token whose encoder output is final
        # frame f is final iff token_of_frame(f + mel_right) <= last_known
        f = frames_for_tokens(n_tokens) + cfg.mel_right + 2
        while f > 0 and token_of_frame(f - 1 + cfg.mel_right) > last_known:
            f -= 1
        return max(0, f)

    def _compute(self, final: bool) -> np.ndarray:
        model = self.detok.model
        cfg = model.cfg
        total_frames = frames_for_tokens(self._n)
        if final:
            mel_end, safe_end = total_frames, total_frames * MEL.hop
        else:
            mel_end = min(self._final_frames(self._n), total_frames)
            safe_end = max(0, (mel_end - self.voc_frames) * MEL.hop)
        if safe_end <= self._emitted or mel_end <= 0:
            return np.zeros(0, dtype=np.float32)
        start_frame = self._emitted // MEL.hop
        w0 = max(0, start_frame - self.context_frames)
        tok0 = max(0, int(token_of_frame(w0)) - cfg.token_left - 1)
        if tok0 < self._offset:
            raise RuntimeError("internal error: streaming window reaches tokens already dropped")
        tokens = torch.tensor(self._tokens[tok0 - self._offset:], dtype=torch.long)
        # The mel encoder reads mel_right frames past mel_end: compute them too, then drop them.
        mel = model.mel_window(tokens, tok0, w0, min(total_frames, mel_end + cfg.mel_right), self.speaker,
                               n_total_tokens=self._n)[:, : mel_end - w0]
        v0 = max(w0, start_frame - self.voc_frames)
        audio = self.detok.vocoder(mel[:, v0 - w0:]).clamp(-1.0, 1.0).numpy().astype(np.float32)
        base = v0 * MEL.hop  # absolute sample index of audio[0]
        new = audio[self._emitted - base: safe_end - base]
        if self._tail is not None and self._tail.size:
            n = min(self._tail.size, new.size)
            ramp = raised_cosine(n)
            new = new.copy()
            new[:n] = self._tail[:n] * (1 - ramp) + new[:n] * ramp
        if final:
            out, self._tail = new, None
        else:
            hold = min(self.crossfade, new.size)
            out, self._tail = new[: new.size - hold], new[new.size - hold:]
        self._emitted += out.size
        # Drop tokens no later window can need.
        keep_from = max(0, int(token_of_frame(max(0, self._emitted // MEL.hop - self.context_frames)))
                        - cfg.token_left - 2)
        if keep_from > self._offset:
            del self._tokens[: keep_from - self._offset]
            self._offset = keep_from
        return out

    # -- public API
    def push(self, tokens: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        if self._done:
            raise RuntimeError("stream already flushed; start a new one with Detokenizer.stream()")
        t = check_tokens(tokens, self.detok.codebook_size)
        self._tokens.extend(t.tolist())
        self._n += t.numel()
        need = self.first_chunk_tokens if self._n_at_emit == 0 else self._n_at_emit + self.chunk_tokens
        if self._n < need:
            return []
        self._n_at_emit = self._n
        chunk = self._compute(final=False)
        return [chunk] if chunk.size else []

    def flush(self) -> np.ndarray:
        if self._done:
            raise RuntimeError("stream already flushed")
        self._done = True
        if frames_for_tokens(self._n) < 1:
            return np.zeros(0, dtype=np.float32)
        return self._compute(final=True)

    @property
    def tokens_held(self) -> int:
        """Tokens kept in memory (bounded by the context window, whatever the answer length)."""
        return len(self._tokens)


class CosyVoiceStream(DetokenizerStream):
    """CosyVoice3 streaming as in the official web demo: token2wav on the growing prefix with an offset.

    Each call passes all tokens so far and ``token_offset`` (tokens already turned into audio); the model
    caches HiFT state under the request id and returns only new samples.
    """

    def __init__(self, detok: CosyVoiceDetokenizer, embedding: torch.Tensor, chunk_tokens: int = 25,
                 lookahead_tokens: int = 3) -> None:
        self.detok = detok
        self.embedding = embedding
        self.chunk_tokens = chunk_tokens
        self.lookahead = lookahead_tokens
        self.sample_rate = detok.sample_rate
        self.request_id = str(uuid.uuid4())
        self._tokens: list[int] = []
        self._offset = 0
        self._done = False

    def push(self, tokens: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        if self._done:
            raise RuntimeError("stream already flushed")
        self._tokens.extend(check_tokens(tokens, self.detok.codebook_size).tolist())
        out = []
        while len(self._tokens) - self._offset >= self.chunk_tokens + self.lookahead:
            wav = self.detok.token2wav(torch.tensor(self._tokens, dtype=torch.int32), self.embedding,
                                       self.request_id, self._offset, finalize=False)
            self._offset += self.chunk_tokens
            out.append(wav.flatten().numpy().astype(np.float32))
        return out

    def flush(self) -> np.ndarray:
        if self._done:
            raise RuntimeError("stream already flushed")
        self._done = True
        try:
            wav = self.detok.token2wav(torch.tensor(self._tokens, dtype=torch.int32), self.embedding,
                                       self.request_id, self._offset, finalize=True)
        finally:
            self.detok.cosyvoice.model.hift_cache_dict.pop(self.request_id, None)
        return wav.flatten().numpy().astype(np.float32)
