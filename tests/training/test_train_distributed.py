"""Two DDP processes (gloo, CPU) give the same parameters as one process with the same global batch.

"Same global batch" here: every optimizer step consumes batch_size * grad_accum * processes samples of
one seeded order.  2 processes x batch 2 x accum 1 put samples [0:2] on rank 0 and [2:4] on rank 1;
1 process x batch 2 x accum 2 runs [0:2] then [2:4] as two micro-batches.  DDP averages the two ranks'
gradients and Accelerate divides each micro-batch loss by grad_accum, so both compute the mean of the
same two micro-batch losses; only the summation order differs (float tolerance).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from funaudiochat.training.synthetic import write_synthetic_dataset
from tests.training.tiny_runs import REPO, TINY, tiny_recipe, weights

STEPS = ["train.max_steps=3", "train.freeze=[]", "optim.lr_max=1e-3", "optim.lr_min=1e-4", "output.plots=false"]


@pytest.mark.slow  # two fresh interpreters with torch + transformers, gloo start-up: ~20-40 s here
def test_two_processes_match_one_process_with_accumulation(tmp_path):
    from funaudiochat.training.trainer import train

    data = write_synthetic_dataset(tmp_path / "data", n=8, kind="sft", seed=7)
    ddp = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", "29617",
        "-m", "funaudiochat.training.cli", "train", str(TINY / "pre_alignment.yaml"),
        "--set", f"data.train=[{data}]", "--set", f"output.dir={ddp}", "--set", "train.batch_size=2",
    ]
    for s in STEPS:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "global batch 4 (2 x 1 accum x 2 processes)" in proc.stderr

    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each DDP process: the same BLAS blocking, so only the summation order differs
    try:
        train(tiny_recipe("pre_alignment", data, single, "train.batch_size=2", "train.grad_accum=2", *STEPS))
    finally:
        torch.set_num_threads(threads)

    a, b = weights(ddp / "final"), weights(single / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    rows_a = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["epoch"] == rb["epoch"] == ra["step"] * 0.5
    # not vacuous: 3 steps at lr 1e-3 moved every backbone weight far beyond the tolerance
    from funaudiochat.training.model_setup import build_model
    from funaudiochat.training.recipes import ModelSection

    init = build_model(ModelSection(tiny=True))[0].state_dict()
    lm = [k for k in a if k.startswith("language_model.")]
    assert all(float((a[k] - init[k]).abs().max()) > 1e-4 for k in lm)
