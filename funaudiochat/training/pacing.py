"""Paced text layout for spoken replies: each text token in the 5 Hz group where its speech starts.

In the released layout (``modeling/targets.py::aligned_text_slots``) a reply's text tokens fill the
first groups of its audio run one per group and ``<|sil|>`` follows.  Text is faster than speech
(about 0.75 tokens per 200 ms group in our answers), so the token fed with a group drifts ahead of
the sound the Speech Refined Head must produce there: the head has to find its place in the text by
itself.  A large backbone learns that; a 135M one with a 2-layer head did not (docs/default-model-history.md,
session 13).  The paced layout puts ``<|sil|>`` between tokens so that each token arrives just
before its own speech, which makes the head's job local: say the word whose token was just read.

The layout needs to know when each word starts.  Our answers are synthesised, so there is no
forced alignment to read; :func:`estimate_word_starts` spreads the characters of the text over the
voiced frames of the recording (pauses take no characters), which is close enough at 5 Hz for
one-voice TTS.  A data file can also give measured starts (``word_starts`` on an assistant turn,
docs/data-format.md).

Frames are speech-token frames (25 Hz); groups are k of them.  A token whose speech starts in audio
group ``j`` goes to run slot ``j + delay_groups - 1``: with the released ``speech_delay`` of two
groups, the position holding that slot is the one whose state predicts audio group ``j``, so the head
sees the token's embedding exactly when it must start saying it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Frames quieter than this (dB below the loudest 40 ms frame of the recording) count as pause.
VOICED_FLOOR_DB = -35.0

_WORD = re.compile(r"\S+")


def voiced_frames(audio: np.ndarray, sample_rate: int, frame_rate: int = 25, floor_db: float = VOICED_FLOOR_DB) -> np.ndarray:
    """Boolean per speech-token frame: is the frame louder than ``floor_db`` below the loudest one."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio, got shape {audio.shape}")
    hop = sample_rate // frame_rate
    n = len(audio) // hop
    if n == 0:
        return np.zeros(0, dtype=bool)
    rms = np.sqrt((audio[: n * hop].reshape(n, hop) ** 2).mean(axis=1) + 1e-12)
    return 20 * np.log10(rms / rms.max()) > floor_db


def _weights(word: str) -> float:
    """Speaking time of a word in character units: letters and digits count, punctuation does not."""
    return float(max(sum(ch.isalnum() for ch in word), 1))


def estimate_word_starts(text: str, voiced: np.ndarray) -> list[int]:
    """Start frame of every whitespace-separated word of ``text``, spread over the voiced frames.

    Each word gets a share of the voiced frames in proportion to its letters and digits, in order;
    silent frames between them (pauses) belong to no word.
    """
    words = _WORD.findall(text)
    frames = np.flatnonzero(voiced)
    if not words:
        return []
    if frames.size == 0:
        raise ValueError("the recording has no voiced frame to align its text to")
    w = np.array([_weights(x) for x in words])
    before = np.concatenate([[0.0], np.cumsum(w)[:-1]]) / w.sum()
    return [int(frames[min(int(f * frames.size), frames.size - 1)]) for f in before]


def word_starts_from_audio(text: str, audio: np.ndarray, n_frames: int, sample_rate: int = 16000) -> list[int] | None:
    """The words' estimated start frames in a reply's recording, for ``word_starts`` in training data.

    ``n_frames`` is the reply's speech-token count (starts must index its tokens).  None, with a
    warning, for a text without words or a silent recording: the record then stays usable by models
    with the released layout.
    """
    try:
        return estimate_word_starts(text, voiced_frames(audio, sample_rate)[:n_frames]) or None
    except ValueError as exc:
        logger.warning("no word starts for %r: %s", text[:40], exc)
        return None


def token_start_frames(text: str, offsets: Sequence[tuple[int, int]], word_starts: Sequence[int]) -> list[int]:
    """Start frame of each text token from its character ``offsets`` and the words' start frames.

    A token inside a word starts at the word's start plus its share of the word's letters up to the
    next word's start (so the sub-word tokens of a long word are spread over it).
    """
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    if len(spans) != len(word_starts):
        raise ValueError(f"the text has {len(spans)} words but {len(word_starts)} word starts were given")
    if not spans:
        return [0] * len(offsets)
    if any(b < a for a, b in zip(word_starts, word_starts[1:])):
        raise ValueError(f"word starts must not decrease, got {list(word_starts)}")
    out: list[int] = []
    w = 0
    for start, end in offsets:
        pos = start
        while pos < end and text[pos].isspace():  # BPE tokens carry the space before the word
            pos += 1
        while w + 1 < len(spans) and spans[w + 1][0] <= pos:
            w += 1
        a, b = spans[w]
        first = word_starts[w]
        nxt = word_starts[w + 1] if w + 1 < len(word_starts) else first + max(b - a, 1)
        share = (min(max(pos, a), b) - a) / max(b - a, 1)
        out.append(int(first + share * max(nxt - first, 0)))
    return out


def paced_text_slots(
    token_ids: Sequence[int],
    start_frames: Sequence[int],
    n_groups: int,
    sil_id: int,
    k: int = 5,
    delay_groups: int = 2,
) -> list[int]:
    """The run's text slots (``n_groups`` ids): each token at ``start // k + delay_groups - 1``.

    Where tokens crowd (two start in one group), earlier ones move earlier, never later: a token
    that arrives after its speech began is what the paced layout exists to avoid.  Free slots hold
    ``<|sil|>``.  Fails when the text has more tokens than the run has groups.
    """
    if len(token_ids) != len(start_frames):
        raise ValueError(f"{len(token_ids)} tokens but {len(start_frames)} start frames")
    if len(token_ids) > n_groups:
        raise ValueError(f"{len(token_ids)} text tokens do not fit in {n_groups} speech groups")
    want = [min(max(f // k + delay_groups - 1, 0), n_groups - 1) for f in start_frames]
    slots = [0] * len(want)
    nxt = n_groups
    for i in range(len(want) - 1, -1, -1):  # latest allowed slot, from the end
        slots[i] = min(want[i], nxt - 1)
        nxt = slots[i]
    prev = -1
    for i in range(len(slots)):  # the crowded start can push below 0: move those forward again
        slots[i] = max(slots[i], prev + 1)
        prev = slots[i]
    out = [sil_id] * n_groups
    for tok, s in zip(token_ids, slots):
        out[s] = int(tok)
    return out
