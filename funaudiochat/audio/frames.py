"""Length bookkeeping from samples to the rates the model works at.

The chain is 16 kHz samples -> 100 Hz log-mel frames -> 50 Hz encoder states (conv2, stride 2) ->
25 Hz pooled features (avg-pool 2) -> 5 Hz LLM positions (groups of 5). Keeping every formula here
lets the processor, the encoder and the tests agree on one definition.
"""

from __future__ import annotations

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
MEL_RATE = SAMPLE_RATE // HOP_LENGTH  # 100 Hz
SPEECH_TOKEN_RATE = 25  # Hz, rate of the speech tokens and of the pooled encoder output
GROUP_SIZE = 5  # speech tokens per LLM position (25 Hz -> 5 Hz)


def mel_frames(n_samples: int) -> int:
    """Log-mel frames our front end yields for ``n_samples`` samples: ``n_samples // 160``.

    A centred STFT gives ``1 + n // 160`` frames; like Whisper we drop the last one.
    """
    return max(int(n_samples), 0) // HOP_LENGTH


def hf_padded_mel_frames(n_samples: int) -> int:
    """Valid frames that transformers' WhisperFeatureExtractor's attention mask marks after padding
    to 30 s: ``ceil(n_samples / 160)`` (one more than :func:`mel_frames` unless ``n % 160 == 0``)."""
    return -(-max(int(n_samples), 0) // HOP_LENGTH)


def conv_frames(n_mel: int) -> int:
    """50 Hz encoder states after conv2 (kernel 3, stride 2, padding 1): ``(L - 1) // 2 + 1``."""
    return (n_mel - 1) // 2 + 1 if n_mel > 0 else 0


def pooled_frames(n_conv: int) -> int:
    """25 Hz features after average pooling (kernel 2, stride 2): ``(L - 2) // 2 + 1`` = ``L // 2``."""
    return (n_conv - 2) // 2 + 1 if n_conv >= 2 else 0


def speech_token_count(n_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of 25 Hz speech positions the official processor allots: ``int(duration * 25)``."""
    return int(max(int(n_samples), 0) * SPEECH_TOKEN_RATE // sample_rate)


def llm_positions(n_samples: int, sample_rate: int = SAMPLE_RATE, group_size: int = GROUP_SIZE) -> int:
    """5 Hz LLM positions for an utterance: ``ceil(speech_token_count / group_size)``."""
    return -(-speech_token_count(n_samples, sample_rate) // group_size)
