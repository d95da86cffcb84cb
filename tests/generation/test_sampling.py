"""Sampling edge cases."""

import torch

from funaudiochat.generation.sampling import SamplingConfig, apply_repetition_penalty, sample_token


def test_extreme_settings_never_produce_nan():
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    g = torch.Generator().manual_seed(0)
    assert sample_token(logits, SamplingConfig(temperature=1e-30), g) == 1
    assert sample_token(logits, SamplingConfig(temperature=1.0, top_p=5e-324), g) == 1
    assert sample_token(logits, SamplingConfig(temperature=1.0, top_k=1), g) == 1


def test_top_k_and_ban_restrict_the_choice():
    logits = torch.tensor([5.0, 4.9, 4.8, 0.0])
    g = torch.Generator().manual_seed(0)
    picks = {sample_token(logits, SamplingConfig(temperature=5.0, top_k=2), g) for _ in range(200)}
    assert picks == {0, 1}
    banned = torch.tensor([0])
    assert sample_token(logits, SamplingConfig(), g, banned=banned) == 1


def test_repetition_penalty_matches_the_formula():
    out = apply_repetition_penalty(torch.tensor([2.0, -2.0, 1.0]), torch.tensor([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]
