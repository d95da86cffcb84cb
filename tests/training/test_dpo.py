"""DPO / cDPO / IPO losses against hand computations, log-prob helpers, per-task metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from funaudiochat.training.dpo import aggregate_by_task, combine_text_speech_logprobs, dpo_loss, sequence_logprobs

# Two pairs. Pair 1: h = (-1 - -3) - (-2 - -2) = 2. Pair 2: h = (-4 - -2) - (-3 - -3) = -2.
PC = torch.tensor([-1.0, -4.0], dtype=torch.float64)
PR = torch.tensor([-3.0, -2.0], dtype=torch.float64)
RC = torch.tensor([-2.0, -3.0], dtype=torch.float64)
RR = torch.tensor([-2.0, -3.0], dtype=torch.float64)
# beta = 0.5 -> beta*h = +1 / -1; -log sigmoid(x) = log(1 + e^-x)
L_POS = math.log(1 + math.exp(-1))  # 0.31326168751822286
L_NEG = math.log(1 + math.exp(1))  # 1.3132616875182228


def test_dpo_sigmoid_hand_computed() -> None:
    out = dpo_loss(PC, PR, RC, RR, beta=0.5)
    assert out.losses.tolist() == pytest.approx([0.31326168751822286, 1.3132616875182228], abs=1e-15)
    assert out.losses.tolist() == pytest.approx([L_POS, L_NEG], abs=1e-15)
    assert float(out.loss) == pytest.approx(0.8132616875182228, abs=1e-15)
    # rewards = beta * (policy - reference)
    assert out.chosen_rewards.tolist() == [0.5, -0.5]
    assert out.rejected_rewards.tolist() == [-0.5, 0.5]
    assert out.margins.tolist() == [1.0, -1.0]
    assert float(out.accuracy) == 0.5
    assert float(dpo_loss(PC, PR, RC, RR, beta=0.5, reduction="sum").loss) == pytest.approx(L_POS + L_NEG, abs=1e-15)


def test_cdpo_label_smoothing_hand_computed() -> None:
    out = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    # (1 - eps) * -log s(bh) + eps * -log s(-bh)
    assert out.losses.tolist() == pytest.approx([0.9 * L_POS + 0.1 * L_NEG, 0.9 * L_NEG + 0.1 * L_POS], abs=1e-15)
    assert out.losses.tolist() == pytest.approx([0.41326168751822286, 1.2132616875182228], abs=1e-15)


def test_ipo_hand_computed() -> None:
    # (h - 1/(2*beta))^2 with 1/(2*0.5) = 1: (2-1)^2 = 1, (-2-1)^2 = 9
    out = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo")
    assert out.losses.tolist() == [1.0, 9.0]
    assert float(out.loss) == 5.0


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_gradient_signs(loss_type: str) -> None:
    pc = torch.tensor([-5.0, -1.0], requires_grad=True)
    pr = torch.tensor([-2.0, -4.0], requires_grad=True)
    rc = torch.tensor([-3.0, -3.0], requires_grad=True)
    rr = torch.tensor([-3.0, -3.0], requires_grad=True)
    dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=loss_type).loss.backward()
    # minimising pushes chosen log-probs up and rejected down (for IPO: while h < 1/(2 beta) = 5)
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    assert rc.grad is None and rr.grad is None  # the reference model is never trained


def test_dpo_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"same shape \[B\], got \[\[2\], \[3\], \[2\], \[2\]\]"):
        dpo_loss(PC, torch.zeros(3), RC, RR)
    with pytest.raises(ValueError, match="beta must be positive, got 0"):
        dpo_loss(PC, PR, RC, RR, beta=0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\), got 0.5"):
        dpo_loss(PC, PR, RC, RR, label_smoothing=0.5)
    with pytest.raises(ValueError, match="unknown loss_type 'hinge'"):
        dpo_loss(PC, PR, RC, RR, loss_type="hinge")


def test_sequence_logprobs_hand_computed() -> None:
    # every position: softmax([0, log 3, 0, 0]) = [1/6, 1/2, 1/6, 1/6]
    logits = torch.tensor([0.0, math.log(3), 0.0, 0.0]).expand(1, 4, 4).clone()
    labels = torch.tensor([[7, 1, -100, 0]])  # shift=1: label 7 at t=0 is never scored
    want = math.log(0.5) + math.log(1 / 6)
    assert float(sequence_logprobs(logits, labels)) == pytest.approx(want, abs=1e-6)
    assert float(sequence_logprobs(logits, labels, average=True)) == pytest.approx(want / 2, abs=1e-6)
    with pytest.raises(ValueError, match=r"label 7 at \[0, 0\] is outside the vocabulary \[0, 4\)"):
        sequence_logprobs(logits, labels, shift=0)
    all_ignored = torch.full((1, 4), -100)
    assert float(sequence_logprobs(logits, all_ignored, average=True)) == 0.0


def test_sequence_logprobs_matches_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 11, generator=g)
    labels = torch.randint(0, 11, (3, 9), generator=g)
    labels[0, 2:5] = -100
    for shift in (0, 1, 5):
        got = sequence_logprobs(logits, labels, shift=shift)
        lg = logits[:, : logits.shape[1] - shift]
        lb = labels[:, shift:]
        ce = F.cross_entropy(lg.reshape(-1, 11), lb.reshape(-1), reduction="none", ignore_index=-100).view(lb.shape)
        assert torch.allclose(got, -ce.sum(-1), atol=1e-5)


def test_combine_text_speech() -> None:
    t = torch.tensor([-2.0, -4.0])
    s = torch.tensor([-10.0, -20.0])
    assert combine_text_speech_logprobs(t, s, text_weight=1.0, speech_weight=0.2).tolist() == [-4.0, -8.0]
    assert combine_text_speech_logprobs(t, None, text_weight=2.0).tolist() == [-4.0, -8.0]
    with pytest.raises(ValueError, match="same shape"):
        combine_text_speech_logprobs(t, torch.zeros(3))


def test_aggregate_by_task() -> None:
    out = dpo_loss(
        torch.tensor([-1.0, -4.0, -1.0, -1.0]),
        torch.tensor([-3.0, -2.0, -3.0, -3.0]),
        torch.full((4,), -2.0),
        torch.full((4,), -2.0),
        beta=0.5,
    )
    tasks = ["empathy", "empathy", "robustness", None]
    agg = aggregate_by_task(tasks, out.metrics())
    assert set(agg) == {"all", "empathy", "robustness", "untagged"}
    assert agg["empathy"]["count"] == 2.0 and agg["all"]["count"] == 4.0
    assert agg["empathy"]["accuracy"] == 0.5 and agg["robustness"]["accuracy"] == 1.0 and agg["all"]["accuracy"] == 0.75
    # empathy pair 2: h = (-4 + 2) - 0 = -2 -> beta*h = -1
    assert agg["empathy"]["loss"] == pytest.approx((L_POS + L_NEG) / 2, abs=1e-6)
    assert agg["robustness"]["loss"] == pytest.approx(L_POS, abs=1e-6)
    assert agg["robustness"]["margin"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"unknown task tag\(s\) \['empaty'\]"):
        aggregate_by_task(["empaty"] * 4, out.metrics())
    with pytest.raises(ValueError, match=r"metric 'loss' has shape \[4\], expected \[3\]"):
        aggregate_by_task(tasks[:3], out.metrics())
