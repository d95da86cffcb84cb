"""Loss and learning-rate curves from a metrics JSONL, saved as PNG.

The metrics file has one JSON object per line (``{"step": 10, "loss": 2.3, "lr": 1e-4, ...}``); lines
may carry only some keys (e.g. evaluation lines), and each curve uses the lines that have its key.
Uses matplotlib's object API with the Agg canvas, so no display and no global pyplot state.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def read_metrics(path: str | os.PathLike[str]) -> list[dict]:
    """Parse the metrics JSONL; a malformed line raises ValueError with its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            if "step" not in row:
                raise ValueError(f"{path}:{lineno}: missing 'step'")
            rows.append(row)
    return rows


def _series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_training_curves(
    metrics_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    loss_keys: Sequence[str] = ("loss", "eval_loss"),
    lr_key: str = "lr",
    width_px: int = 1200,
    height_px: int = 480,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Write a two-panel PNG (losses vs step, learning rate vs step) of exactly width_px x height_px."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is an optional dependency
        raise ImportError("plot_training_curves needs matplotlib (pip install matplotlib)") from exc
    rows = read_metrics(metrics_path)
    curves = {k: _series(rows, k) for k in loss_keys}
    curves = {k: v for k, v in curves.items() if v[0]}
    lr_steps, lrs = _series(rows, lr_key)
    if not curves and not lrs:
        raise ValueError(f"{metrics_path}: no finite values for any of {list(loss_keys) + [lr_key]}")

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(1, 2)
    for key, (steps, values) in curves.items():
        ax_loss.plot(steps, values, label=key, marker="o" if len(steps) < 50 else None, markersize=3)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(True, alpha=0.3)
    if curves:
        ax_loss.legend()
    ax_lr.plot(lr_steps, lrs, color="tab:orange")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_lr.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    logger.info("wrote %s", out)
    return out
