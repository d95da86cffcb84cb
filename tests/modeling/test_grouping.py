"""Grouping (25 Hz -> 5 Hz) and un-grouping, with exact values."""

import pytest
import torch

from funaudiochat.config import FunAudioChatAudioEncoderConfig
from funaudiochat.modeling.grouping import SpeechTokenGrouping, group_frames, pad_to_multiple, ungroup_frames
from funaudiochat.modeling.targets import match_runs


def small_grouping(k: int, mode: str, fusion: str = "replace") -> SpeechTokenGrouping:
    cfg = FunAudioChatAudioEncoderConfig(
        output_dim=2, codebook_size=12, bos_token_id=9, eos_token_id=10, pad_token_id=11,
        group_size=k, grouping_mode=mode, continuous_features_mode=fusion, d_model=4,
        encoder_attention_heads=1,
    )
    g = SpeechTokenGrouping(cfg)
    with torch.no_grad():
        # token i embeds to [i, 10 i]; the pad row is zero
        g.embed_tokens.weight.copy_(torch.tensor([[i, 10.0 * i] for i in range(12)]))
        g.embed_tokens.weight[11] = 0
        g.continual_output_matching.weight.copy_(torch.eye(2))
        if mode == "mean":
            g.output_matching.weight.copy_(torch.eye(2))
        else:  # sum the k concatenated copies: W = [I I ... I]
            g.output_matching.weight.copy_(torch.cat([torch.eye(2)] * k, dim=1))
    return g


IDS = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])


@pytest.mark.parametrize(
    "k, expected",
    [
        (1, [[1, 10], [2, 20], [3, 30], [4, 40], [5, 50], [6, 60], [7, 70]]),
        (2, [[1.5, 15], [3.5, 35], [5.5, 55], [3.5, 35]]),  # last group: (7 + pad 0) / 2
        (5, [[3, 30], [2.6, 26]]),  # (6 + 7 + 0 + 0 + 0) / 5
    ],
)
def test_mean_grouping_values(k, expected):
    out = small_grouping(k, "mean")(IDS)
    assert out.shape == (1, len(expected), 2)
    torch.testing.assert_close(out[0], torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize("k, expected", [(1, [[v, 10 * v] for v in range(1, 8)]), (2, [[3, 30], [7, 70], [11, 110], [7, 70]]), (5, [[15, 150], [13, 130]])])
def test_concat_grouping_values(k, expected):
    g = small_grouping(k, "concat")
    assert g.output_matching.weight.shape == (2, 2 * k)  # paper Eq. 1: Linear(kH -> H)
    out = g(IDS)
    torch.testing.assert_close(out[0], torch.tensor(expected, dtype=torch.float32))


def test_group_frames_concat_layout_and_ungroup_inverse():
    x = torch.arange(2 * 10 * 3, dtype=torch.float32).view(2, 10, 3)
    grouped = group_frames(x, 5, "concat")
    assert grouped.shape == (2, 2, 15)
    # sub-frame j of group p is frame 5p + j
    torch.testing.assert_close(grouped[1, 1, 6:9], x[1, 7])
    torch.testing.assert_close(ungroup_frames(grouped, 5), x)


def test_pad_to_multiple_pads_speech_with_value():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    assert pad_to_multiple(ids, 5, 11).tolist() == [[1, 2, 3, 4, 5, 6, 7, 11, 11, 11]]
    assert pad_to_multiple(ids, 1, 11).tolist() == ids.tolist()
    with pytest.raises(ValueError, match="not divisible"):
        ungroup_frames(torch.zeros(1, 2, 7), 5)


@pytest.mark.parametrize("fusion", ["replace", "add"])
def test_continuous_features_fusion(fusion):
    g = small_grouping(5, "mean", fusion)
    ids = torch.full((2, 5), 11)
    ids[1] = torch.tensor([1, 2, 3, 4, 5])
    feats = torch.ones(2, 5, 2)
    exist = torch.tensor([True, False])
    out = g(ids, feats, exist)
    # item 0 has a waveform: its group takes the grouped features ([1, 1]); item 1 keeps its tokens
    assert out[0, 0].tolist() == [1.0, 1.0]
    assert out[1, 0].tolist() == [3.0, 30.0]
    if fusion == "add":
        g2 = small_grouping(5, "mean", fusion)
        both = g2(ids[1:], feats[1:], torch.tensor([True]))
        assert both[0, 0].tolist() == [4.0, 31.0]


def test_feature_length_mismatch_is_reported():
    g = small_grouping(5, "mean")
    with pytest.raises(ValueError, match="continuous features have 4 frames but speech ids have 5"):
        g(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 4, 2))


def test_placeholder_count_mismatch_names_both_counts():
    ids = torch.tensor([[0, 7, 7, 7, 0]])
    with pytest.raises(ValueError, match=r"3 <\|AUDIO\|> placeholder tokens but the audio items need 2 positions"):
        match_runs(ids, 7, [2])
    with pytest.raises(ValueError, match="audio item 0 needs 1"):
        match_runs(torch.tensor([[7, 7, 0, 7]]), 7, [1, 2])


def test_bad_grouping_config_is_rejected():
    with pytest.raises(ValueError, match="grouping_mode"):
        FunAudioChatAudioEncoderConfig(grouping_mode="sum")
    with pytest.raises(ValueError, match="continuous_features_mode"):
        FunAudioChatAudioEncoderConfig(continuous_features_mode="concat")
    with pytest.raises(ValueError, match="outside the speech codebook"):
        FunAudioChatAudioEncoderConfig(codebook_size=100)


def test_the_continuous_map_sees_only_rows_with_a_waveform():
    g = small_grouping(2, "mean")
    seen = []

    def double(x):
        seen.append(x.shape[0])
        return 2 * x

    ids = torch.full((3, 4), 11)
    feats = torch.ones(3, 4, 2)
    out = g(ids, feats, torch.tensor([True, False, True]), double)
    assert seen == [2]
    torch.testing.assert_close(out[0], torch.full((2, 2), 2.0))  # mapped features replace the tokens
    torch.testing.assert_close(out[1], torch.zeros(2, 2))  # pad tokens, features unused
