"""optim.lr_scale: per-prefix multipliers of the scheduled lr (a pretrained encoder slower than its adapter)."""

import pytest
import torch

from funaudiochat.training.recipes import RecipeError, apply_overrides, recipe_from_dict
from funaudiochat.training.trainer import build_optimizer, build_scheduler

from tests.training.test_recipes import BASE


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(3, 3)
        self.proj = torch.nn.Linear(3, 2)
        self.frozen = torch.nn.Linear(2, 2).requires_grad_(False)


def _recipe(*overrides: str):
    return recipe_from_dict(apply_overrides(BASE, ["optim.lr_max=1e-3", "optim.lr_min=1e-4", *overrides]))


def test_scaled_groups_follow_the_schedule_at_their_multiple():
    net = _Net()
    opt = build_optimizer(net, _recipe("optim.lr_scale={encoder.: 0.1}"))
    sched = build_scheduler(opt, _recipe(), 10)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    enc, proj = by_id[id(net.encoder.weight)], by_id[id(net.proj.weight)]
    assert id(net.frozen.weight) not in by_id
    assert by_id[id(net.encoder.bias)]["weight_decay"] == 0.0 and by_id[id(net.encoder.bias)]["lr_scale"] == 0.1
    seen = []
    for _ in range(10):
        assert enc["lr"] == pytest.approx(0.1 * proj["lr"], rel=1e-12)
        seen.append(proj["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(1e-3) and seen[-1] == pytest.approx(1e-4)
    assert sched.get_last_lr()[0] == proj["lr"]  # the logged lr is the unscaled one


def test_longest_prefix_wins_and_unused_prefixes_are_errors():
    net = _Net()
    opt = build_optimizer(net, _recipe("optim.lr_scale={encoder.: 0.1, encoder.bias: 2.0}"))
    build_scheduler(opt, _recipe(), 5)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_id[id(net.encoder.bias)]["lr"] == pytest.approx(2e-3)
    assert by_id[id(net.encoder.weight)]["lr"] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match=r"no trainable parameter starts with \['frozen.'\]"):
        build_optimizer(net, _recipe("optim.lr_scale={frozen.: 0.5}"))


def test_bad_multipliers_are_reported_with_their_prefix():
    with pytest.raises(RecipeError, match=r"optim.lr_scale\['encoder.'\]: must be a number > 0, got 0"):
        _recipe("optim.lr_scale={encoder.: 0}")
