"""Shared helpers for the default-model tests."""

import json
from pathlib import Path


def write_benchdata(root: Path, sets: dict[str, list[dict]]) -> Path:
    """A benchmark folder as the build reads it: ``<root>/<set>/dev.jsonl``, one record per line."""
    for name, rows in sets.items():
        (root / name).mkdir(parents=True)
        (root / name / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
