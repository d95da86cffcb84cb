"""Run results: the scored-item record, run JSON files, Markdown reports and bar charts.

A run JSON file (schema ``funaudiochat.eval.run/v1``, documented in docs/evaluation.md) holds
every scored item and a per-(set, mode, metric) summary, so reports and comparisons can be
rebuilt without re-running the model.  Charts are drawn with matplotlib's object API on an Agg
canvas (no pyplot global state, works headless).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "RUN_SCHEMA",
    "ScoredItem",
    "SetSummary",
    "RunResult",
    "summarize",
    "write_run_json",
    "load_run_json",
    "plot_summaries",
    "write_markdown_report",
    "write_comparison_report",
]

RUN_SCHEMA = "funaudiochat.eval.run/v1"

# Metrics where a lower value is better (shown with a note in reports).
_LOWER_IS_BETTER = frozenset({"wer", "cer"})


@dataclass
class ScoredItem:
    """One model answer after scoring; the runner fills one per (item, mode).

    ``score`` is the per-item value of ``metric`` (1.0/0.0 for accuracy-type metrics, the
    utterance error rate for wer/cer) or None when not scored automatically (open-ended sets).
    ``details`` carries checker output (error types, extracted letters, edit counts).
    """

    id: str
    set: str
    mode: str
    prediction: str
    score: float | None
    details: dict[str, Any] = field(default_factory=dict)
    metric: str = "accuracy"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScoredItem":
        missing = [k for k in ("id", "set", "mode", "prediction", "score") if k not in d]
        if missing:
            raise ValueError(f"scored item lacks fields {missing}")
        return cls(id=str(d["id"]), set=str(d["set"]), mode=str(d["mode"]),
                   prediction=str(d["prediction"]),
                   score=None if d["score"] is None else float(d["score"]),
                   details=dict(d.get("details") or {}), metric=str(d.get("metric", "accuracy")))


@dataclass(frozen=True)
class SetSummary:
    """Aggregate of one (set, mode, metric) group; ``value`` is a fraction (0..1) or None."""

    set: str
    mode: str
    metric: str
    n: int
    n_scored: int
    value: float | None
    extra: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d


@dataclass(frozen=True)
class RunResult:
    run_name: str
    created: str
    meta: Mapping[str, Any]
    items: tuple[ScoredItem, ...]
    summary: tuple[SetSummary, ...]


def _group_value(metric: str, items: list[ScoredItem]) -> tuple[float | None, dict[str, float]]:
    scored = [it for it in items if it.score is not None]
    if not scored:
        return None, {}
    extra: dict[str, float] = {}
    if metric in _LOWER_IS_BETTER and all("errors" in it.details and "ref_len" in it.details
                                          for it in scored):
        errors = sum(int(it.details["errors"]) for it in scored)
        ref_len = sum(int(it.details["ref_len"]) for it in scored)
        # No reference words at all: a rate exists only when nothing was inserted either.
        value = errors / ref_len if ref_len else (None if errors else 0.0)
        # An utterance with an empty reference has no rate (inf with any word heard), and one would make
        # the mean inf: the mean is over the others, and how many were left out is said beside it.
        rated = [float(it.score) for it in scored if int(it.details["ref_len"]) > 0]
        if rated:
            extra["mean_utterance_rate"] = sum(rated) / len(rated)
        if len(rated) < len(scored):
            extra["empty_references"] = float(len(scored) - len(rated))
        return value, extra
    value = sum(float(it.score) for it in scored) / len(scored)
    if all("strict" in it.details and "loose" in it.details for it in scored):  # IFEval
        n_inst = sum(len(it.details["strict"]) for it in scored)
        extra["prompt_strict"] = sum(all(it.details["strict"]) for it in scored) / len(scored)
        extra["prompt_loose"] = sum(all(it.details["loose"]) for it in scored) / len(scored)
        if n_inst:
            extra["instruction_strict"] = sum(sum(it.details["strict"]) for it in scored) / n_inst
            extra["instruction_loose"] = sum(sum(it.details["loose"]) for it in scored) / n_inst
    return value, extra


def summarize(items: Iterable[ScoredItem]) -> list[SetSummary]:
    """Group by (set, mode, metric) in first-seen order.  Error-rate metrics are corpus level
    (sum of edits / sum of reference lengths) when items carry ``errors``/``ref_len``."""
    groups: dict[tuple[str, str, str], list[ScoredItem]] = {}
    for it in items:
        groups.setdefault((it.set, it.mode, it.metric), []).append(it)
    out = []
    for (set_name, mode, metric), group in groups.items():
        value, extra = _group_value(metric, group)
        out.append(SetSummary(set_name, mode, metric, len(group),
                              sum(1 for it in group if it.score is not None), value, extra))
    return out


def write_run_json(path: str | Path, items: Sequence[ScoredItem], run_name: str,
                   meta: Mapping[str, Any] | None = None) -> RunResult:
    """Write all items plus their summary to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(items)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc = {
        "schema": RUN_SCHEMA,
        "run_name": run_name,
        "created": created,
        "meta": dict(meta or {}),
        "summary": [s.to_dict() for s in summary],
        "items": [asdict(it) for it in items],
    }
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    logger.info("wrote %d scored items to %s", len(items), path)
    return RunResult(run_name, created, dict(meta or {}), tuple(items), tuple(summary))


def load_run_json(path: str | Path) -> RunResult:
    """Read a run file; the summary is recomputed from the items (the stored one is a cache)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run result file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(doc, dict) or doc.get("schema") != RUN_SCHEMA:
        raise ValueError(f"{path}: not a run result file (schema must be {RUN_SCHEMA!r})")
    items = []
    for i, d in enumerate(doc.get("items", [])):
        try:
            items.append(ScoredItem.from_dict(d))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: item {i}: {exc}") from exc
    return RunResult(str(doc.get("run_name", path.stem)), str(doc.get("created", "")),
                     dict(doc.get("meta", {})), tuple(items), tuple(summarize(items)))


#: ``SetSummary.extra`` keys that count items; every other extra is a rate, shown in percent.
_COUNT_EXTRAS = frozenset({"empty_references"})


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _label(s: SetSummary) -> str:
    return f"{s.set} [{s.mode}]"


def plot_summaries(runs: Mapping[str, Sequence[SetSummary]], out_png: str | Path,
                   title: str = "") -> Path:
    """Grouped bar chart: one group per (set, mode, metric), one bar per run, values in %."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    keys: list[tuple[str, str, str]] = []
    for summaries in runs.values():
        for s in summaries:
            k = (s.set, s.mode, s.metric)
            if k not in keys and s.value is not None:
                keys.append(k)
    n_runs = max(1, len(runs))
    fig = Figure(figsize=(max(6.0, 0.9 * len(keys) * max(1, n_runs) + 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / n_runs
    for r, (run_name, summaries) in enumerate(runs.items()):
        lookup = {(s.set, s.mode, s.metric): s.value for s in summaries}
        xs = [i + (r - (n_runs - 1) / 2) * width for i in range(len(keys))]
        vals = [100 * (lookup.get(k) or 0.0) for k in keys]
        bars = ax.bar(xs, vals, width=width, label=run_name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{s}\n[{m}] {met}" for s, m, met in keys], rotation=30, ha="right",
                       fontsize=8)
    ax.set_ylabel("value (%)")
    if title:
        ax.set_title(title)
    if len(runs) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    return out_png


def _summary_table(summary: Sequence[SetSummary]) -> list[str]:
    lines = ["| set | mode | metric | n | scored | value (%) | details |",
             "|---|---|---|---:|---:|---:|---|"]
    for s in summary:
        note = " (lower is better)" if s.metric in _LOWER_IS_BETTER else ""
        extra = ", ".join(f"{k} {int(v) if k in _COUNT_EXTRAS else _fmt(v)}" for k, v in s.extra.items())
        lines.append(f"| {s.set} | {s.mode} | {s.metric}{note} | {s.n} | {s.n_scored} | "
                     f"{_fmt(s.value)} | {extra} |")
    return lines


def write_markdown_report(run: RunResult | str | Path, out_md: str | Path,
                          chart: bool = True) -> Path:
    """Markdown report of one run: summary table, optional bar chart next to the file."""
    if not isinstance(run, RunResult):
        run = load_run_json(run)
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Evaluation report: {run.run_name}", ""]
    if run.created:
        lines += [f"Created: {run.created}", ""]
    if run.meta:
        lines += ["| meta | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in run.meta.items()]
        lines.append("")
    lines += ["## Results per set and mode", ""] + _summary_table(run.summary) + [""]
    if chart and any(s.value is not None for s in run.summary):
        png = plot_summaries({run.run_name: run.summary}, out_md.with_suffix(".png"),
                             title=run.run_name)
        lines += [f"![results]({png.name})", ""]
    out_md.write_text("\n".join(lines), encoding="utf-8")
    return out_md


def write_comparison_report(runs: Sequence[RunResult | str | Path], out_md: str | Path,
                            chart: bool = True) -> Path:
    """One table with a column per run for every (set, mode, metric) seen in any run."""
    loaded = [r if isinstance(r, RunResult) else load_run_json(r) for r in runs]
    if not loaded:
        raise ValueError("write_comparison_report: no runs given")
    names = [r.run_name for r in loaded]
    if len(set(names)) != len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    keys: list[tuple[str, str, str]] = []
    for r in loaded:
        for s in r.summary:
            if (s.set, s.mode, s.metric) not in keys:
                keys.append((s.set, s.mode, s.metric))
    lines = ["# Evaluation comparison", "",
             "| set | mode | metric | " + " | ".join(names) + " |",
             "|---|---|---|" + "---:|" * len(names)]
    for k in keys:
        cells = []
        for r in loaded:
            match = [s for s in r.summary if (s.set, s.mode, s.metric) == k]
            cells.append(f"{_fmt(match[0].value)} (n={match[0].n})" if match else "-")
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + " |")
    lines.append("")
    if chart:
        png = plot_summaries({n: r.summary for n, r in zip(names, loaded)},
                             out_md.with_suffix(".png"), title="comparison")
        lines += [f"![comparison]({png.name})", ""]
    out_md.write_text("\n".join(lines), encoding="utf-8")
    return out_md
