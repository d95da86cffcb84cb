"""Label construction on a hand-made conversation, checked against a worked example."""

import torch

from funaudiochat.config import tiny_config
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.modeling.targets import build_targets, find_audio_runs, match_runs, srh_teacher_inputs

CFG = tiny_config()
A, BOS, EOS, SIL = CFG.audio_token_index, CFG.audio_bos_id, CFG.audio_eos_id, CFG.sil_id
IM_START, IM_END, NL, USER, ASSISTANT = 1, 2, 7, 5, 6
SP_BOS, SP_EOS, SP_PAD = 6561, 6562, 6563
T0, T1, T2 = 40, 41, 42  # the assistant's three transcript tokens

# Worked example (k = 5, speech delay 10):
#   pos  0..2  <|im_start|> user \n
#   pos  3     <|audio_bos|>
#   pos  4..6  <|AUDIO|> x3     user speech: 13 frames at 25 Hz -> ceil(13/5) = 3 groups
#   pos  7..9  <|audio_eos|> <|im_end|> \n
#   pos 10..12 <|im_start|> assistant \n
#   pos 13     <|audio_bos|>
#   pos 14..18 <|AUDIO|> x5     assistant speech: 10 BOS + 12 tokens = 22 -> 5 groups
#   pos 19, 20 <|audio_eos|> <|im_end|>
INPUT = [IM_START, USER, NL, BOS, A, A, A, EOS, IM_END, NL, IM_START, ASSISTANT, NL, BOS, A, A, A, A, A, EOS, IM_END]
SPEECH = list(range(100, 112))  # 12 real speech tokens s0..s11

EXPECTED_TEXT_LABELS = [-100] * 13 + [BOS, T0, T1, T2, SIL, SIL, EOS, IM_END]
EXPECTED_SPEECH_GROUPS = {
    14: [SP_BOS] * 5,  # the delay: two groups of speech BOS
    15: [SP_BOS] * 5,
    16: [100, 101, 102, 103, 104],
    17: [105, 106, 107, 108, 109],
    18: [110, 111, -100, -100, -100],  # last group padded; padding is not a target
    19: [SP_EOS] * 5,  # the <|audio_eos|> position
}


def inputs():
    ids = torch.tensor([INPUT])
    labels = torch.full_like(ids, -100)
    labels[0, 13:] = ids[0, 13:]
    speech = torch.full((2, 22), SP_PAD)
    mask = torch.zeros(2, 22, dtype=torch.long)
    mask[0, :13] = 1
    speech[1] = torch.tensor([SP_BOS] * 10 + SPEECH)
    mask[1] = 1
    text = torch.tensor([[0, 0, 0], [T0, T1, T2]])
    text_mask = torch.tensor([[0, 0, 0], [1, 1, 1]])
    return ids, labels, speech, mask, text, text_mask


def test_worked_example_text_and_speech_labels():
    ids, labels, speech, mask, text, text_mask = inputs()
    runs = match_runs(ids, A, [3, 5])
    assert [(r.start, r.end) for r in runs] == [(4, 7), (14, 19)]
    speech = torch.cat([speech, torch.full((2, 3), SP_PAD)], 1)  # padded to a multiple of 5
    mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], 1)
    slots = [None, torch.tensor([T0, T1, T2, SIL, SIL])]
    text_labels, speech_labels = build_targets(
        ids, labels, runs, speech, mask, slots, k=5, audio_eos_id=EOS, speech_eos_id=SP_EOS
    )
    assert text_labels[0].tolist() == EXPECTED_TEXT_LABELS
    groups = speech_labels.view(1, 21, 5)[0]
    for pos in range(21):
        assert groups[pos].tolist() == EXPECTED_SPEECH_GROUPS.get(pos, [-100] * 5), pos

    prev, targets = srh_teacher_inputs(speech_labels, 5)
    # The <|audio_bos|> position (13) predicts the first delay group; its first sub-frame has no
    # previous speech token, the next ones are fed the delay tokens they follow.
    assert targets[0, 65:70].tolist() == [SP_BOS] * 5
    assert prev[0, 65:70].tolist() == [-100, SP_BOS, SP_BOS, SP_BOS, SP_BOS]
    # Position 15 predicts s0..s4, each fed the token just before it.
    assert targets[0, 75:80].tolist() == [100, 101, 102, 103, 104]
    assert prev[0, 75:80].tolist() == [SP_BOS, 100, 101, 102, 103]
    # Position 18 predicts the speech EOS group.
    assert targets[0, 90:95].tolist() == [SP_EOS] * 5


def test_model_forward_builds_the_same_labels():
    torch.manual_seed(0)
    model = FunAudioChatForConditionalGeneration(CFG).eval()
    ids, labels, speech, mask, text, text_mask = inputs()
    out = model(
        input_ids=ids, labels=labels, speech_ids=speech, speech_attention_mask=mask,
        text_ids=text, text_attention_mask=text_mask,
        input_features=torch.randn(1, 80, 52), feature_exist_mask=torch.tensor([True, False]),
    )
    groups = out.speech_labels.view(1, 21, 5)[0]
    for pos, expected in EXPECTED_SPEECH_GROUPS.items():
        assert groups[pos].tolist() == expected
    # The text loss equals cross-entropy against the worked example's labels.
    expected = torch.nn.functional.cross_entropy(
        out.logits[0, :-1], torch.tensor(EXPECTED_TEXT_LABELS[1:]), ignore_index=-100
    )
    torch.testing.assert_close(out.text_loss, expected)
    assert out.speech_logits.shape == (1, 105, CFG.audio_config.codebook_size)


def test_runs_found_in_row_major_order():
    ids = torch.tensor([[9, A, A, 9, A], [A, 9, 9, 9, 9]])
    assert [(r.row, r.start, r.end) for r in find_audio_runs(ids, A)] == [(0, 1, 3), (0, 4, 5), (1, 0, 1)]
