"""Training losses of funaudiochat-tiny builds side by side, against samples seen.

    python scripts/plot_build_losses.py OUT.png LABEL=RUNS_DIR [LABEL=RUNS_DIR ...]

RUNS_DIR is a build's ``<work>/runs`` (one ``<stage>/metrics.jsonl`` per stage).  The x axis counts
training samples across the stages in recipe order, so builds with different batch sizes compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAGES = ("pre_alignment", "core_cocktail_stage1", "core_cocktail_stage2")


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None]  # a batch with no spoken reply has no speech loss
    return sum(vals) / len(vals) if vals else float("nan")


def curves(runs: Path) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """stage -> (samples seen, text loss, speech loss), means over 20-step windows."""
    out, seen = {}, 0.0
    for stage in STAGES:
        rows = [json.loads(x) for x in (runs / stage / "metrics.jsonl").read_text().splitlines() if x.strip()]
        recipe = runs / stage / "recipe.yaml"
        batch = 8
        if recipe.is_file():
            import yaml

            batch = yaml.safe_load(recipe.read_text())["train"]["batch_size"]
        xs, text, speech = [], [], []
        for i in range(0, len(rows), 20):
            win = rows[i:i + 20]
            xs.append(seen + batch * (i + len(win) / 2))
            text.append(_mean(win, "text_loss"))
            speech.append(_mean(win, "speech_loss"))
        seen += batch * len(rows)
        out[stage] = (xs, text, speech)
    return out


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, builds = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for (label, runs), colour in zip(builds, ("tab:blue", "tab:orange", "tab:green")):
        for j, (stage, (x, text, speech)) in enumerate(curves(Path(runs)).items()):
            style = ("-", "--", ":")[j]
            axes[0].plot(x, text, style, color=colour, label=f"{label}: {stage}")
            axes[1].plot(x, speech, style, color=colour)
    axes[0].set(title="text loss (nats per token)", xlabel="training samples seen")
    axes[1].set(title="speech loss (nats per 25 Hz token; chance 6.93)", xlabel="training samples seen")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
