"""Crash-safe training checkpoints that resume bit-identically.

A checkpoint ``<root>/checkpoint-<step:08d>/`` holds the model (safetensors), optimizer and scheduler
state, the RNG states (python, numpy, torch, cuda) and the data-sampler position, plus
``trainer_state.json`` which lists every file with its size. It is written under
``<root>/.tmp-checkpoint-<step>`` and renamed into place only when complete, so a run killed mid-save
leaves at most a hidden temp folder that :func:`find_latest_checkpoint` ignores.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch.utils.data import Sampler

from funaudiochat.training.fsutil import TMP_PREFIX, atomic_directory

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "trainer_state.json"
MODEL_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
RNG_NAME = "rng_state.pt"
_CKPT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


@dataclass
class SamplerState:
    """Where the data order stands: permutation ``seed + epoch``, ``position`` samples consumed."""

    epoch: int = 0
    position: int = 0
    seed: int = 0


class ResumableSampler(Sampler[int]):
    """Deterministic per-epoch shuffle that can restart in the middle of an epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``. The training loop calls :meth:`advance`
    with the number of samples it actually consumed (prefetching workers may read ahead, so the
    sampler cannot count this itself); iterating yields the rest of the current epoch.

    With ``lengths`` and ``group`` > 1 the shuffled order is cut into windows of ``group`` samples and
    each window is sorted by length (:func:`length_grouped`), so the batches cut from it hold items
    of similar length and pad little.
    """

    def __init__(
        self, num_samples: int, seed: int = 0, shuffle: bool = True,
        lengths: Sequence[float] | None = None, group: int = 0,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_samples} samples")
        if group < 0 or (group > 1 and lengths is None):
            raise ValueError(f"group must be >= 0 and needs lengths when > 1, got group={group}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.lengths = None if lengths is None else [float(n) for n in lengths]
        self.group = group if group > 1 else 0
        self.state = SamplerState(seed=seed)

    def order(self, epoch: int) -> list[int]:
        """The full index order of ``epoch``."""
        if not self.shuffle:
            base = list(range(self.num_samples))
        else:
            gen = torch.Generator().manual_seed(self.state.seed + epoch)
            base = torch.randperm(self.num_samples, generator=gen).tolist()
        if self.group:
            return length_grouped(base, self.lengths, self.group)
        return base

    def __iter__(self) -> Iterator[int]:
        yield from self.order(self.state.epoch)[self.state.position :]

    def __len__(self) -> int:
        return self.num_samples - self.state.position

    def advance(self, n: int) -> None:
        """Mark ``n`` more samples of the current epoch as consumed; rolls over to the next epoch."""
        if n < 0 or self.state.position + n > self.num_samples:
            raise ValueError(
                f"cannot advance by {n}: position {self.state.position} of {self.num_samples} in epoch {self.state.epoch}"
            )
        self.state.position += n
        if self.state.position == self.num_samples:
            self.state.epoch += 1
            self.state.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {**asdict(self.state), "num_samples": self.num_samples, "shuffle": self.shuffle, "group": self.group}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        group = int(state.get("group", 0))  # checkpoints written before length grouping have none
        if state["num_samples"] != self.num_samples or state["shuffle"] != self.shuffle or group != self.group:
            raise ValueError(
                f"sampler state is for num_samples={state['num_samples']}, shuffle={state['shuffle']}, "
                f"group={group}, but this sampler has num_samples={self.num_samples}, shuffle={self.shuffle}, "
                f"group={self.group} (dataset or data.group_by_length changed?)"
            )
        self.state = SamplerState(epoch=int(state["epoch"]), position=int(state["position"]), seed=int(state["seed"]))


def length_grouped(order: Sequence[int], lengths: Sequence[float], group: int) -> list[int]:
    """``order`` cut into windows of ``group`` indices, each sorted by length, alternately longest and
    shortest first.

    Why alternate: the trainer cuts batches from consecutive indices across epoch boundaries, so
    when the epoch is not a whole number of batches the cuts drift off the windows' batch edges; with
    the direction alternating, the items on both sides of a window edge are of similar length, and a
    drifted batch still pads little.  Sorting is stable, so equal lengths keep the shuffled order.
    """
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    out: list[int] = []
    for w, start in enumerate(range(0, len(order), group)):
        window = sorted(order[start : start + group], key=lambda i: lengths[i], reverse=w % 2 == 0)
        out += window
    return out


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy (if installed), torch CPU and all CUDA devices, in torch.load-safe types."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional
        np = None
    if np is not None:
        ns = np.random.get_state(legacy=False)
        state["numpy"] = {
            "bit_generator": ns["bit_generator"],
            "key": torch.from_numpy(ns["state"]["key"].astype("int64")),
            "pos": int(ns["state"]["pos"]),
            "has_gauss": int(ns["has_gauss"]),
            "gauss": float(ns["gauss"]),
        }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        ns = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": ns["bit_generator"],
                "state": {"key": ns["key"].numpy().astype(np.uint32), "pos": ns["pos"]},
                "has_gauss": ns["has_gauss"],
                "gauss": ns["gauss"],
            }
        )
    if "cuda" in state:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            logger.warning("checkpoint has CUDA RNG states but CUDA is not available; not restored")


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def _is_valid(path: Path, step: int) -> bool:
    """Complete checkpoint: readable trainer_state.json for this step and every listed file at its size."""
    try:
        state = json.loads((path / STATE_NAME).read_text())
        if state.get("step") != step:
            return False
        return all((path / name).is_file() and (path / name).stat().st_size == size for name, size in state["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def list_checkpoints(root: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Valid checkpoints under ``root`` as ``(step, path)``, oldest first; invalid ones are logged."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        m = _CKPT_RE.match(entry.name)
        if not m or not entry.is_dir():
            continue
        step = int(m.group(1))
        if _is_valid(entry, step):
            found.append((step, entry))
        else:
            logger.warning("ignoring incomplete checkpoint %s", entry)
    return sorted(found)


def find_latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """Newest complete checkpoint, or None. Temporary ``.tmp-*`` folders are never considered."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def save_checkpoint(
    root: str | os.PathLike[str],
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    sampler: ResumableSampler | None = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = 3,
) -> Path:
    """Atomically write ``<root>/checkpoint-<step>`` and prune all but the newest ``keep_last``.

    Single writer assumed (rank 0 in distributed runs). ``extra`` must be JSON-serialisable; it is
    returned by :func:`load_checkpoint`. Saving an existing step replaces it.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{TMP_PREFIX}{CHECKPOINT_PREFIX}*"):
        logger.warning("removing partial checkpoint %s left by an interrupted save", stale)
        shutil.rmtree(stale, ignore_errors=True)
    final = root / checkpoint_name(step)
    with atomic_directory(final, overwrite=True) as tmp:
        save_model(model, str(tmp / MODEL_NAME), metadata={"format": "pt"})
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_NAME)
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_NAME)
        torch.save(capture_rng_state(), tmp / RNG_NAME)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        state = {
            "step": step,
            "sampler": sampler.state_dict() if sampler is not None else None,
            "extra": dict(extra) if extra is not None else None,
            "files": files,
        }
        (tmp / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")
    logger.info("saved %s", final)
    if keep_last is not None:
        for _, old in list_checkpoints(root)[:-keep_last]:
            logger.info("removing old checkpoint %s", old)
            shutil.rmtree(old)
    return final


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    sampler: ResumableSampler | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into the given objects; returns trainer_state.json.

    Raises FileNotFoundError/ValueError naming the checkpoint if it is incomplete or lacks a requested
    part (e.g. an optimizer state was asked for but never saved).
    """
    path = Path(path)
    m = _CKPT_RE.match(path.name)
    if not m or not _is_valid(path, int(m.group(1))):
        raise ValueError(f"not a complete checkpoint: {path}")
    state = json.loads((path / STATE_NAME).read_text())
    load_model(model, str(path / MODEL_NAME), strict=True, device=str(map_location))
    for obj, name in ((optimizer, OPTIMIZER_NAME), (scheduler, SCHEDULER_NAME)):
        if obj is None:
            continue
        if name not in state["files"]:
            raise FileNotFoundError(f"{path}: no {name} in this checkpoint")
        obj.load_state_dict(torch.load(path / name, map_location=map_location, weights_only=True))
    if sampler is not None:
        if state["sampler"] is None:
            raise FileNotFoundError(f"{path}: no sampler state in this checkpoint")
        sampler.load_state_dict(state["sampler"])
    if restore_rng:
        restore_rng_state(torch.load(path / RNG_NAME, weights_only=True))
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state
