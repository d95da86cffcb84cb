"""A run killed (SIGKILL) after a checkpoint and resumed with --resume ends with the same weights, and the
same metrics, as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from funaudiochat.training.synthetic import write_synthetic_dataset
from tests.training.tiny_runs import REPO, TINY, tiny_recipe, weights

# 5 steps, a checkpoint every 2 (keep 2): killed after step 3 -> resumes from step 2 and redoes step 3.
SETTINGS = ["train.max_steps=5", "output.save_every=2", "output.keep_last=2", "train.batch_size=3", "train.freeze=[]",
            "output.plots=false"]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # two fresh interpreters (torch + transformers imports): ~20-60 s on the 2-core box
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    from funaudiochat.training.trainer import train

    data = write_synthetic_dataset(tmp_path / "data", n=8, kind="sft", seed=2)  # 5 x 3 samples: 2 epochs
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = tmp_path / "killed"
    worker = Path(__file__).with_name("train_kill_worker.py")
    sets = [a for s in SETTINGS for a in ("--set", s)]
    proc = subprocess.run(
        [sys.executable, str(worker), "pre_alignment", str(data), str(killed), "--kill-at", "3", *sets],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / "final").exists()
    assert sorted(p.name for p in (killed / "checkpoints").glob("checkpoint-*")) == ["checkpoint-00000002"]
    assert [r["step"] for r in _rows(killed)] == [1, 2, 3]

    resumed = subprocess.run(
        [sys.executable, "-m", "funaudiochat.training.cli", "train", str(TINY / "pre_alignment.yaml"),
         "--set", f"data.train=[{data}]", "--set", f"output.dir={killed}", *sets, "--resume"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "checkpoint-00000002" in resumed.stderr

    clean = tmp_path / "clean"
    train(tiny_recipe("pre_alignment", data, clean, *SETTINGS))

    a, b = weights(killed / "final"), weights(clean / "final")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    rows_a, rows_b = _rows(killed), _rows(clean)
    assert [r["step"] for r in rows_a] == list(range(1, 6))  # the replayed step 3 is logged once
    for ra, rb in zip(rows_a, rows_b):
        assert (ra["loss"], ra["lr"], ra["epoch"]) == (rb["loss"], rb["lr"], rb["epoch"])


def test_resume_refuses_a_different_run_shape(tmp_path):
    from funaudiochat.training.trainer import train

    data = write_synthetic_dataset(tmp_path / "data", n=4, kind="sft", seed=2)
    out = tmp_path / "run"
    stop = []

    def halt(step, _state):
        if step == 2:
            stop.append(step)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_recipe("pre_alignment", data, out, "train.max_steps=4", "output.save_every=2"), callbacks=[halt])
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(tiny_recipe("pre_alignment", data, out, "train.max_steps=4"))
    with pytest.raises(ValueError, match="written with total_steps=4 but this run has 6"):
        train(tiny_recipe("pre_alignment", data, out, "train.max_steps=6"), resume=True)
