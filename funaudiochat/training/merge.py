"""Core-Cocktail intermediate merging: ``M = alpha * T + (1 - alpha) * B`` (paper eq. 7).

The Stage-1 model (tuned, ``T``) is interpolated with the original backbone (base, ``B``) over the
parameters whose names start with one of ``prefixes`` (the shared LLM, ``language_model.``); all other
parameters (encoders, adapter, SRH) come from the tuned model unchanged. Work is streamed one tensor at a
time through ``safetensors.safe_open`` so memory stays at one output shard plus one tensor pair, which is
what makes merging an 8B/30B checkpoint on a small machine possible.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from funaudiochat.training.fsutil import TMP_PREFIX, atomic_directory

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MERGE_INFO_NAME = "merge_info.json"
DEFAULT_MAX_SHARD_BYTES = 4 * 1024**3
# Weight files from the tuned folder that must not be copied next to the merged safetensors.
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth")


class MergeError(ValueError):
    """Base and tuned checkpoints cannot be merged (missing or mismatched tensors)."""


def list_tensors(ckpt_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Map every tensor name of a safetensors checkpoint folder to the file that holds it.

    Supports a single ``model.safetensors`` or a sharded ``model.safetensors.index.json``.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {ckpt_dir}")
    index = ckpt_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index}: not a valid safetensors index (need a 'weight_map'): {exc}") from exc
        out: dict[str, Path] = {}
        for name, fname in weight_map.items():
            path = ckpt_dir / fname
            if not path.is_file():
                raise FileNotFoundError(f"{index}: shard {fname!r} (holding {name!r}) does not exist")
            out[name] = path
        return out
    single = ckpt_dir / WEIGHTS_NAME
    if single.is_file():
        with safe_open(single, framework="pt") as fh:
            return {name: single for name in fh.keys()}
    raise FileNotFoundError(f"{ckpt_dir}: neither {INDEX_NAME} nor {WEIGHTS_NAME} found")


class _Reader:
    """Reads one tensor at a time from a checkpoint, opening its shard only for that read.

    safetensors maps files into memory; keeping handles open would leave every page already read
    resident, so the footprint would grow to the whole checkpoint. Headers are cached once.
    """

    def __init__(self, files: Mapping[str, Path]) -> None:
        self._files = files
        self._specs: dict[str, tuple[tuple[int, ...], str]] = {}
        for path in sorted(set(files.values())):
            with safe_open(path, framework="pt") as fh:
                for name in fh.keys():
                    sl = fh.get_slice(name)
                    self._specs[name] = (tuple(sl.get_shape()), sl.get_dtype())
        missing = [n for n in files if n not in self._specs]
        if missing:
            raise FileNotFoundError(f"tensor {missing[0]!r} is listed in the index but absent from {files[missing[0]]}")

    def spec(self, name: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype from the header only (no data read)."""
        return self._specs[name]

    def tensor(self, name: str) -> torch.Tensor:
        with safe_open(self._files[name], framework="pt") as fh:
            return fh.get_tensor(name).clone()  # detach from the mmap so it can be unmapped


def _map_base_name(name: str, base_prefix_map: Mapping[str, str] | None) -> str:
    """Rename a base tensor into the tuned model's namespace (longest matching prefix wins)."""
    if not base_prefix_map:
        return name
    best = max((p for p in base_prefix_map if name.startswith(p)), key=len, default=None)
    if best is None:
        return name
    return base_prefix_map[best] + name[len(best) :]


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


def interpolate(tuned: torch.Tensor, base: torch.Tensor, alpha: float, chunk_elems: int = 1 << 22) -> torch.Tensor:
    """``alpha * tuned + (1 - alpha) * base`` computed in fp32 (fp64 stays fp64), cast back to the dtype.

    Processed in chunks of ``chunk_elems`` so the fp32 temporaries stay small next to a large bf16
    matrix. alpha 0 and 1 return exact copies so non-finite values in the other operand cannot leak in.
    """
    if alpha == 1.0:
        return tuned.clone()
    if alpha == 0.0:
        return base.clone()
    work = torch.float64 if tuned.dtype == torch.float64 else torch.float32
    out = torch.empty_like(tuned, memory_format=torch.contiguous_format)
    flat_out, flat_t, flat_b = out.view(-1), tuned.reshape(-1), base.reshape(-1)
    for start in range(0, flat_out.numel(), chunk_elems):
        sl = slice(start, start + chunk_elems)
        flat_out[sl] = (alpha * flat_t[sl].to(work) + (1.0 - alpha) * flat_b[sl].to(work)).to(tuned.dtype)
    return out


def _is_weight_file(name: str) -> bool:
    return name.endswith(_WEIGHT_SUFFIXES)


def _copy_non_weight_files(src: Path, dst: Path) -> list[str]:
    """Copy config/tokenizer/etc. from the tuned folder; weight files are regenerated, not copied."""
    copied = []
    for entry in sorted(src.iterdir()):
        if entry.name.startswith(TMP_PREFIX) or entry.name == MERGE_INFO_NAME or _is_weight_file(entry.name):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name)
        else:
            shutil.copy2(entry, dst / entry.name)
        copied.append(entry.name)
    return copied


def _plan(
    tuned: _Reader,
    tuned_names: Sequence[str],
    base: _Reader,
    base_files: Mapping[str, Path],
    prefixes: Sequence[str],
    base_prefix_map: Mapping[str, str] | None,
) -> dict[str, str]:
    """Pair each tuned tensor under ``prefixes`` with its base tensor; validate all pairs from headers.

    Returns tuned name -> base name. Raises MergeError listing every problem at once.
    """
    mapped: dict[str, str] = {}
    problems: list[str] = []
    for base_name in base_files:
        new = _map_base_name(base_name, base_prefix_map)
        if new in mapped:
            problems.append(f"base tensors {mapped[new]!r} and {base_name!r} both map to {new!r}")
        mapped[new] = base_name
    tuned_set = set(tuned_names)
    pairs: dict[str, str] = {}
    for name in tuned_names:
        if not name.startswith(tuple(prefixes)):
            continue
        if name not in mapped:
            problems.append(f"tensor {name!r} is missing in base")
            continue
        t_shape, t_dtype = tuned.spec(name)
        b_shape, b_dtype = base.spec(mapped[name])
        if t_shape != b_shape:
            problems.append(
                f"tensor {name!r}: shape mismatch tuned {list(t_shape)} vs base {list(b_shape)} (base name {mapped[name]!r})"
            )
        elif t_dtype != b_dtype:
            problems.append(f"tensor {name!r}: dtype mismatch tuned {t_dtype} vs base {b_dtype} (base name {mapped[name]!r})")
        pairs[name] = mapped[name]
    for new, base_name in mapped.items():
        if new.startswith(tuple(prefixes)) and new not in tuned_set:
            problems.append(f"base tensor {base_name!r} (as {new!r}) is missing in tuned")
    if problems:
        raise MergeError("cannot merge checkpoints:\n  " + "\n  ".join(problems))
    return pairs


def _merged_tensors(
    tuned: _Reader, tuned_names: Sequence[str], base: _Reader, pairs: Mapping[str, str], alpha: float
) -> Iterator[tuple[str, torch.Tensor]]:
    for name in tuned_names:
        t = tuned.tensor(name)
        if name in pairs:
            b = base.tensor(pairs[name])
            if t.shape != b.shape or t.dtype != b.dtype:  # header lied; never merge silently
                raise MergeError(f"tensor {name!r}: tuned {t.dtype}{list(t.shape)} vs base {b.dtype}{list(b.shape)}")
            if t.is_floating_point():
                t = interpolate(t, b, alpha)
            del b
        yield name, t


def _write_shards(
    tensors: Iterable[tuple[str, torch.Tensor]], out: Path, max_shard_bytes: int, metadata: Mapping[str, str]
) -> dict[str, str]:
    """Write shards of at most ``max_shard_bytes`` (one tensor may exceed it) plus the index if >1 shard."""
    weight_map: dict[str, str] = {}
    shard_files: list[Path] = []
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = 0
    total = 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        path = out / f"part-{len(shard_files) + 1:05d}.safetensors"
        save_file(shard, str(path), metadata=dict(metadata))
        shard_files.append(path)
        for key in shard:
            weight_map[key] = path.name
        shard, shard_bytes = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + nbytes > max_shard_bytes:
            flush()
        shard[name] = tensor.contiguous()
        shard_bytes += nbytes
        total += nbytes
    if shard or not shard_files:
        flush()

    n = len(shard_files)
    final_names = {p.name: (WEIGHTS_NAME if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors") for i, p in enumerate(shard_files, 1)}
    for p in shard_files:
        p.rename(out / final_names[p.name])
    weight_map = {k: final_names[v] for k, v in weight_map.items()}
    if n > 1:
        index = {"metadata": {"total_size": total, **metadata}, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return weight_map


def merge_checkpoints(
    base_dir: str | os.PathLike[str],
    tuned_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    alpha: float = 0.5,
    prefixes: Sequence[str] = ("language_model.",),
    base_prefix_map: Mapping[str, str] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Write ``alpha * tuned + (1 - alpha) * base`` for tensors under ``prefixes`` into ``out_dir``.

    Tensors outside ``prefixes`` (and non-floating tensors) are copied from ``tuned``; base tensors
    outside ``prefixes`` are ignored. ``base_prefix_map`` renames base tensors first, so a plain causal
    LM folder can serve as base, e.g. ``{"model.": "language_model.model.", "lm_head.":
    "language_model.lm_head."}``. The output (safetensors shards, index when sharded, non-weight files of
    ``tuned`` and ``merge_info.json``) appears atomically: on any error ``out_dir`` is not created.
    """
    alpha = _check_alpha(alpha)
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    prefixes = tuple(prefixes)
    if not prefixes:
        raise ValueError("prefixes must name at least one parameter prefix")
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    base_dir, tuned_dir, out_dir = Path(base_dir), Path(tuned_dir), Path(out_dir)
    base_files = list_tensors(base_dir)
    tuned_files = list_tensors(tuned_dir)
    # Deterministic order: by shard file, then by name, so the output shards mirror the tuned layout.
    tuned_names = sorted(tuned_files, key=lambda n: (tuned_files[n].name, n))
    metadata = {"format": "pt"}
    tuned = _Reader(tuned_files)
    base = _Reader(base_files)
    pairs = _plan(tuned, tuned_names, base, base_files, prefixes, base_prefix_map)
    if not pairs:
        raise MergeError(f"no tensor in {tuned_dir} starts with any of {list(prefixes)}; nothing to merge")
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        weight_map = _write_shards(_merged_tensors(tuned, tuned_names, base, pairs, alpha), tmp, max_shard_bytes, metadata)
        copied = _copy_non_weight_files(tuned_dir, tmp)
        info = {
            "alpha": alpha,
            "formula": "alpha * tuned + (1 - alpha) * base",
            "prefixes": list(prefixes),
            "base_prefix_map": dict(base_prefix_map or {}),
            "base_dir": str(base_dir.resolve()),
            "tuned_dir": str(tuned_dir.resolve()),
            "num_tensors": len(weight_map),
            "num_merged": len(pairs),
            "num_shards": len(set(weight_map.values())),
            "copied_files": copied,
        }
        (tmp / MERGE_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    logger.info("merged %d/%d tensors (alpha=%s) into %s", len(pairs), len(weight_map), alpha, out_dir)
    return out_dir


def merge_lora(
    base_weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, alpha: float = 1.0
) -> torch.Tensor:
    """Merge a LoRA delta with Core-Cocktail weight: ``W + alpha * scaling * (B @ A)``.

    Interpolating ``W`` with the LoRA-tuned ``W + scaling * B @ A`` is the same as adding ``alpha`` times
    the delta. Shapes: W [out, in], A [r, in], B [out, r]; computed in fp32, returned in W's dtype.
    """
    alpha = _check_alpha(alpha)
    if base_weight.ndim != 2 or lora_A.ndim != 2 or lora_B.ndim != 2:
        raise ValueError(
            f"merge_lora expects 2-D tensors, got W{list(base_weight.shape)}, A{list(lora_A.shape)}, B{list(lora_B.shape)}"
        )
    out_f, in_f = base_weight.shape
    if lora_A.shape[1] != in_f or lora_B.shape[0] != out_f or lora_B.shape[1] != lora_A.shape[0]:
        raise ValueError(
            f"LoRA shape mismatch: W{list(base_weight.shape)} needs A[r, {in_f}] and B[{out_f}, r], "
            f"got A{list(lora_A.shape)} and B{list(lora_B.shape)}"
        )
    work = torch.float64 if base_weight.dtype == torch.float64 else torch.float32
    delta = lora_B.to(work) @ lora_A.to(work)
    return (base_weight.to(work) + (alpha * float(scaling)) * delta).to(base_weight.dtype)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m funaudiochat.training.merge BASE TUNED OUT --alpha 0.5``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_dir")
    parser.add_argument("tuned_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--prefix", action="append", dest="prefixes", help="parameter prefix to merge (repeatable)")
    parser.add_argument(
        "--base-llm",
        action="store_true",
        help="base is a plain causal LM: map model./lm_head. to language_model.model./language_model.lm_head.",
    )
    parser.add_argument("--max-shard-gb", type=float, default=DEFAULT_MAX_SHARD_BYTES / 1024**3)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    prefix_map = {"model.": "language_model.model.", "lm_head.": "language_model.lm_head."} if args.base_llm else None
    merge_checkpoints(
        args.base_dir,
        args.tuned_dir,
        args.out_dir,
        alpha=args.alpha,
        prefixes=tuple(args.prefixes or ("language_model.",)),
        base_prefix_map=prefix_map,
        max_shard_bytes=int(args.max_shard_gb * 1024**3),
        overwrite=args.overwrite,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
