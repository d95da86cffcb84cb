"""The paced text layout: voiced frames, word starts, token starts and slot placement."""

import numpy as np
import pytest

from funaudiochat.training.pacing import (
    estimate_word_starts,
    paced_text_slots,
    token_start_frames,
    voiced_frames,
)

SR = 16000
HOP = SR // 25
SIL = 99


def _tone(frames: int) -> np.ndarray:
    t = np.arange(frames * HOP) / SR
    return 0.5 * np.sin(2 * np.pi * 220 * t)


def test_voiced_frames_marks_pauses():
    audio = np.concatenate([np.zeros(2 * HOP), _tone(5), np.zeros(3 * HOP), _tone(4), np.zeros(HOP // 2)])
    v = voiced_frames(audio, SR)
    assert v.tolist() == [False] * 2 + [True] * 5 + [False] * 3 + [True] * 4  # the half frame is dropped


def test_voiced_frames_rejects_stereo_and_handles_short_audio():
    with pytest.raises(ValueError, match="mono"):
        voiced_frames(np.zeros((2, 800)), SR)
    assert voiced_frames(np.zeros(10), SR).size == 0


def test_word_starts_follow_letters_and_skip_pauses():
    voiced = np.array([False, True, True, True, True, False, False, True, True, True, True, False])
    # "ab" and "cd" share the first run, "efgh" the second: 8 letters over 8 voiced frames
    assert estimate_word_starts("ab cd, efgh.", voiced) == [1, 3, 7]
    assert estimate_word_starts("", voiced) == []
    with pytest.raises(ValueError, match="no voiced frame"):
        estimate_word_starts("hello", np.zeros(5, dtype=bool))


def test_token_starts_spread_subwords_over_their_word():
    text = "The Tempest is"
    # tokens: "The", " Temp", "est", " is" (offsets include the leading space, as BPE ones do)
    offsets = [(0, 3), (3, 8), (8, 11), (11, 14)]
    starts = token_start_frames(text, offsets, [0, 4, 12])
    assert starts == [0, 4, 8, 12]  # "est" starts 4 of 7 letters into "Tempest", 8 frames long
    with pytest.raises(ValueError, match="3 words but 2 word starts"):
        token_start_frames(text, offsets, [0, 4])
    with pytest.raises(ValueError, match="must not decrease"):
        token_start_frames(text, offsets, [0, 5, 4])


def test_paced_slots_place_each_token_one_group_before_its_sound():
    # delay of 2 groups: a token whose speech starts in audio group j goes to slot j + 1
    slots = paced_text_slots([10, 11, 12], [0, 12, 30], n_groups=10, sil_id=SIL, k=5, delay_groups=2)
    assert slots == [SIL, 10, SIL, 11, SIL, SIL, SIL, 12, SIL, SIL]


def test_paced_slots_move_crowded_tokens_earlier_never_later():
    # three tokens want slot 3; the earlier two go to 1 and 2
    assert paced_text_slots([1, 2, 3], [10, 11, 12], 6, SIL) == [SIL, 1, 2, 3, SIL, SIL]
    # crowded at the very start: pushed forward only as far as needed
    assert paced_text_slots([1, 2, 3], [0, 0, 0], 4, SIL) == [1, 2, 3, SIL]
    # a start past the run clamps to its last slot
    assert paced_text_slots([1], [100], 3, SIL) == [SIL, SIL, 1]


def test_paced_slots_errors():
    with pytest.raises(ValueError, match="3 text tokens do not fit in 2 speech groups"):
        paced_text_slots([1, 2, 3], [0, 1, 2], 2, SIL)
    with pytest.raises(ValueError, match="2 tokens but 1 start frames"):
        paced_text_slots([1, 2], [0], 4, SIL)
