"""Checkpoints: killed-and-resumed training equals uninterrupted training bit for bit."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from funaudiochat.training.checkpoint import (
    ResumableSampler,
    length_grouped,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _worker():
    spec = importlib.util.spec_from_file_location("resume_worker", HERE / "resume_worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_killed_run_resumes_identically(tmp_path: Path) -> None:
    worker = _worker()
    reference = worker.train(tmp_path / "ref", 12)

    root = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(HERE / "resume_worker.py"), str(root), "12", "--crash-at", "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 17, proc.stderr  # died inside save_checkpoint at step 8
    # the interrupted save left only a hidden partial folder, which is ignored
    assert (root / ".tmp-checkpoint-00000008" / "model.safetensors").is_file()
    assert not (root / ".tmp-checkpoint-00000008" / "trainer_state.json").exists()
    assert sorted(p.name for p in root.iterdir()) == [".tmp-checkpoint-00000008", "checkpoint-00000004", "checkpoint-00000006"]
    assert find_latest_checkpoint(root) == root / "checkpoint-00000006"

    resumed = worker.train(root, 12, resume=True)
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-00000010", "checkpoint-00000012"]

    state = json.loads((root / "checkpoint-00000012" / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["sampler"]["epoch"] == 2 and state["sampler"]["position"] == 8

    # the comparison is sensitive: resuming step 10 without restoring the RNG states gives other weights
    other = tmp_path / "norng"
    other.mkdir()
    shutil.copytree(root / "checkpoint-00000010", other / "checkpoint-00000010")
    no_rng = worker.train(other, 12, resume=True, restore_rng=False)
    assert any(not torch.equal(no_rng[k], reference[k]) for k in reference)


def test_invalid_checkpoints_ignored(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 1, model)
    save_checkpoint(tmp_path, 2, model)
    (tmp_path / "checkpoint-00000099").mkdir()  # no trainer_state.json
    (tmp_path / ".tmp-checkpoint-00000100").mkdir()  # partial save
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-00000002"
    # truncated file: listed size no longer matches
    with open(tmp_path / "checkpoint-00000002" / "model.safetensors", "r+b") as fh:
        fh.truncate(10)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    with pytest.raises(ValueError, match="not a complete checkpoint: .*checkpoint-00000002"):
        load_checkpoint(tmp_path / "checkpoint-00000002", model)
    with pytest.raises(FileNotFoundError, match="no optimizer.pt in this checkpoint"):
        load_checkpoint(tmp_path / "checkpoint-00000001", model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert find_latest_checkpoint(tmp_path / "nothing") is None


def test_keep_last_and_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, model, extra={"note": step}, keep_last=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4, 5]
    other = torch.nn.Linear(3, 2)
    state = load_checkpoint(tmp_path / "checkpoint-00000005", other, restore_rng=False)
    assert state["extra"] == {"note": 5}
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_rng_restored(tmp_path: Path) -> None:
    import random

    import numpy as np

    save_checkpoint(tmp_path, 0, torch.nn.Linear(1, 1))
    want = (random.random(), float(np.random.rand()), torch.rand(3))
    load_checkpoint(tmp_path / "checkpoint-00000000", torch.nn.Linear(1, 1))
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert want[:2] == got[:2] and torch.equal(want[2], got[2])


def test_sampler() -> None:
    s = ResumableSampler(6, seed=3)
    e0 = list(s)
    assert sorted(e0) == list(range(6))
    s.advance(4)
    assert list(s) == e0[4:] and len(s) == 2
    s.advance(2)
    assert s.state.epoch == 1 and s.state.position == 0 and list(s) == s.order(1) != e0
    t = ResumableSampler(6, seed=99)
    t.load_state_dict(s.state_dict())
    assert list(t) == list(s)
    with pytest.raises(ValueError, match="cannot advance by 7: position 0 of 6 in epoch 1"):
        s.advance(7)
    with pytest.raises(ValueError, match=r"sampler state is for num_samples=6.*num_samples=5.*dataset or data.group_by_length changed"):
        ResumableSampler(5).load_state_dict(s.state_dict())


def test_length_grouped_sorts_each_window_alternately() -> None:
    lengths = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 0.5]
    order = [0, 1, 2, 3, 4, 5, 6]
    # windows [0 1 2] [3 4 5] [6]: longest first, then shortest first, then longest first
    assert length_grouped(order, lengths, 3) == [0, 2, 1, 3, 4, 5, 6]
    assert length_grouped([3, 1], [1.0, 1.0, 1.0, 1.0], 2) == [3, 1]  # ties keep the shuffled order
    with pytest.raises(ValueError, match="group must be >= 1"):
        length_grouped(order, lengths, 0)


def test_grouped_sampler_batches_similar_lengths_and_resumes() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = (torch.rand(200, generator=gen) * 10 + 1).tolist()
    plain = ResumableSampler(200, seed=5)
    grouped = ResumableSampler(200, seed=5, lengths=lengths, group=40)

    def padding(order: list[int]) -> float:  # padded length over real length, batches of 8
        batches = [order[i : i + 8] for i in range(0, 200, 8)]
        return sum(8 * max(lengths[i] for i in b) for b in batches) / sum(lengths)

    for epoch in range(2):
        o = grouped.order(epoch)
        assert sorted(o) == list(range(200))  # a permutation of the epoch
        # the same items per window as the plain shuffle, only reordered within it
        assert [sorted(o[i : i + 40]) for i in range(0, 200, 40)] == [
            sorted(plain.order(epoch)[i : i + 40]) for i in range(0, 200, 40)]
        assert padding(o) < 1.25 < padding(plain.order(epoch))
    assert grouped.order(1) != grouped.order(0) and grouped.order(1) == ResumableSampler(
        200, seed=5, lengths=lengths, group=40).order(1)
    grouped.advance(30)
    again = ResumableSampler(200, seed=0, lengths=lengths, group=40)
    again.load_state_dict(grouped.state_dict())
    assert list(again) == list(grouped) == grouped.order(0)[30:]
    with pytest.raises(ValueError, match=r"group=40, but this sampler has .*group=0 .*group_by_length changed"):
        ResumableSampler(200).load_state_dict(grouped.state_dict())
    old = {k: v for k, v in ResumableSampler(200).state_dict().items() if k != "group"}  # before grouping existed
    ResumableSampler(200).load_state_dict(old)
    with pytest.raises(ValueError, match="lengths has 3 entries for 200 samples"):
        ResumableSampler(200, lengths=[1.0, 2.0, 3.0], group=2)
    with pytest.raises(ValueError, match="needs lengths"):
        ResumableSampler(200, group=8)
