"""Shared helpers for the training-engine tests: tiny recipes pointed at a temporary folder."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny"


def tiny_recipe(name: str, data: Path, out: Path, *overrides: str):
    """Load ``recipes/tiny/<name>.yaml`` with data and output redirected (plus extra ``--set`` overrides)."""
    from funaudiochat.training.recipes import load_recipe

    return load_recipe(TINY / f"{name}.yaml", [f"data.train=[{data}]", f"output.dir={out}", *overrides])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a save_pretrained / checkpoint folder (single safetensors file)."""
    return load_file(str(Path(folder) / "model.safetensors"))


def split(sd: dict[str, torch.Tensor], prefix: str) -> tuple[dict, dict]:
    inside = {k: v for k, v in sd.items() if k.startswith(prefix)}
    outside = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    return inside, outside
