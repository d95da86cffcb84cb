"""Training curves PNG: written, right pixel size, bad metrics lines rejected."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from funaudiochat.training.plots import plot_training_curves, read_metrics  # noqa: E402


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_written_with_size(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 3.0 * math.exp(-s / 30), "lr": 1e-4 * (0.5 + 0.5 * math.cos(math.pi * s / 100))} for s in range(100)]
    rows += [{"step": s, "eval_loss": 2.0} for s in (50, 99)]
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = plot_training_curves(metrics, tmp_path / "plots" / "curves.png", width_px=800, height_px=300)
    assert out.is_file()
    assert png_size(out) == (800, 300)
    assert png_size(plot_training_curves(metrics, tmp_path / "b.png")) == (1200, 480)


def test_bad_metrics(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON"):
        read_metrics(bad)
    bad.write_text('{"loss": 1.0}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing 'step'"):
        read_metrics(bad)
    bad.write_text('{"step": 1, "acc": 1.0}\n')
    with pytest.raises(ValueError, match="no finite values"):
        plot_training_curves(bad, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
