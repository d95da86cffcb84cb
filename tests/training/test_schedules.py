"""Warmup + cosine schedule: end points exact, formula mid-way, resumable state."""

from __future__ import annotations

import math

import pytest
import torch

from funaudiochat.training.schedules import WarmupCosine, warmup_cosine_scheduler


def lrs(warmup: int, total: int, lr_max: float, lr_min: float, n: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    sched = warmup_cosine_scheduler(opt, warmup, total, lr_max, lr_min)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(("lr_max", "lr_min"), [(1e-4, 1e-5), (1e-5, 1e-6)])
def test_end_points_exact(lr_max: float, lr_min: float) -> None:
    got = lrs(10, 110, lr_max, lr_min, 115)
    assert got[0] == 0.0
    assert got[10] == lr_max
    assert got[110] == lr_min
    assert got[114] == lr_min
    assert max(got) == lr_max and min(got[10:]) == lr_min


def test_values_match_formula() -> None:
    got = lrs(10, 110, 1e-4, 1e-5, 111)
    assert got[5] == pytest.approx(0.5e-4, rel=1e-12)  # half-way through warmup
    assert got[60] == pytest.approx(5.5e-5, rel=1e-12)  # half-way through decay: mean of max and min
    # a quarter of the decay: 1e-5 + 9e-5 * (1 + cos(pi/4)) / 2
    assert got[35] == pytest.approx(1e-5 + 9e-5 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-12)
    assert all(a >= b for a, b in zip(got[10:], got[11:])), "decay must be monotone"
    assert WarmupCosine(10, 110, 1e-4, 1e-5).lr(60) == pytest.approx(5.5e-5, rel=1e-12)


def test_no_warmup_and_init_ratio() -> None:
    assert lrs(0, 4, 1.0, 0.0, 5) == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])
    s = WarmupCosine(4, 8, 2.0, 1.0, warmup_init_ratio=0.5)
    assert [s(i) for i in range(5)] == [0.5, 0.625, 0.75, 0.875, 1.0]


def test_state_dict_roundtrip() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine_scheduler(opt, 2, 20, 1e-3, 1e-4)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = warmup_cosine_scheduler(opt2, 1, 5, 9.0, 1.0)  # wrong parameters, restored from state
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    for _ in range(5):
        opt.step(); sched.step(); opt2.step(); sched2.step()  # noqa: E702
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"warmup_steps": 5, "total_steps": 5}, r"warmup_steps must be in \[0, total_steps=5\), got 5"),
        ({"lr_min": 2e-4}, r"lr_min must be in \[0, lr_max=0.0001\], got 0.0002"),
        ({"total_steps": 0, "warmup_steps": 0}, "total_steps must be positive, got 0"),
    ],
)
def test_bad_arguments(kwargs: dict, msg: str) -> None:
    args = {"warmup_steps": 1, "total_steps": 10, "lr_max": 1e-4, "lr_min": 1e-5} | kwargs
    with pytest.raises(ValueError, match=msg):
        WarmupCosine(**args)
