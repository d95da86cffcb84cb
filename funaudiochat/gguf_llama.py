"""A llama-architecture GGUF file turned into a transformers model directory in one pass.

Why not ``from_pretrained(..., gguf_file=...)``: transformers parses the file's metadata three times
with gguf's element-by-element reader (once each for config, tokenizer and weights) and rebuilds a
tensor-name table per parameter. For the 135M SmolLM2 backbone that is about 45 s on a slow 2-core
machine, most of the README's cold start. Here the header is parsed once with ``struct`` and numpy
(well under a second), the weights are de-quantised with gguf's own kernels, and the files written
are the ones transformers writes (``tests/test_gguf_llama.py`` compares them tensor by tensor).

Layout of a GGUF file (v2/v3): magic ``GGUF``, version, tensor count, metadata count; metadata as
(key, type, value) records; tensor records (name, dims fastest-first, ggml type, offset); padding
to ``general.alignment``; then the tensor data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types: id -> (struct format, numpy dtype); 8 is a string, 9 an array.
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("<B", "<u1"),
    1: ("<b", "<i1"),
    2: ("<H", "<u2"),
    3: ("<h", "<i2"),
    4: ("<I", "<u4"),
    5: ("<i", "<i4"),
    6: ("<f", "<f4"),
    7: ("<?", "?"),
    10: ("<Q", "<u8"),
    11: ("<q", "<i8"),
    12: ("<d", "<f8"),
}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """The file is not a GGUF this reader understands (names the file and what is wrong)."""


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # numpy order (slowest first), the reverse of the file's dims
    ggml_type: int
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]


class _Cursor:
    """Sequential little-endian reads over the file's bytes."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated GGUF (needs byte {self.pos + n:,}, file has {len(self.buf):,})")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.scalar("<Q"))).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype][0])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if etype in _SCALARS:
                dtype = np.dtype(_SCALARS[etype][1])
                return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).tolist()
            return [self.value(etype) for _ in range(count)]
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype} at byte {self.pos:,}")


def read_gguf(path: str | Path) -> GGUFFile:
    """Metadata and tensor records of a GGUF file; tensor data stays on disk until asked for."""
    from gguf.constants import GGML_QUANT_SIZES

    path = Path(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(memoryview(raw), path)
    if bytes(cur.take(4)) != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (no 'GGUF' magic)")
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    records = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        records.append((name, tuple(reversed(dims)), cur.scalar("<I"), cur.scalar("<Q")))
    align = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = -(-cur.pos // align) * align
    tensors = {}
    for name, shape, ggml_type, offset in records:
        if ggml_type not in GGML_QUANT_SIZES:
            raise GGUFError(f"{path}: tensor {name} has unknown ggml type {ggml_type}")
        block, type_size = GGML_QUANT_SIZES[ggml_type]
        nbytes = int(np.prod(shape, dtype=np.int64)) // block * type_size
        if data_start + offset + nbytes > len(raw):
            raise GGUFError(f"{path}: tensor {name} runs past the end of the file (truncated download?)")
        tensors[name] = GGUFTensor(name, shape, ggml_type, data_start + offset, nbytes)
    return GGUFFile(path, version, metadata, tensors)


def tensor_as_float32(gguf_file: GGUFFile, tensor: GGUFTensor) -> np.ndarray:
    """One tensor de-quantised to float32, shaped like the numpy view gguf's reader gives."""
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import dequantize

    raw = np.memmap(gguf_file.path, dtype=np.uint8, mode="r", offset=tensor.offset, shape=(tensor.nbytes,))
    block, type_size = GGML_QUANT_SIZES[tensor.ggml_type]
    rows = tensor.shape[:-1]
    packed = np.array(raw).reshape(*rows, tensor.shape[-1] // block * type_size)  # a writable copy
    return np.ascontiguousarray(dequantize(packed, tensor.ggml_type), dtype=np.float32).reshape(tensor.shape)


def _unpermute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of the rotary halves in q/k projection rows."""
    rows = weight.shape[0]
    pairs = weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
    return np.ascontiguousarray(pairs.swapaxes(1, 2)).reshape(weight.shape)


# GGUF block tensor name -> transformers name inside ``model.layers.{i}``.
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_tensor_name(gguf_name: str) -> str:
    stem, _, kind = gguf_name.rpartition(".")
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{kind}"
    raise GGUFError(f"tensor {gguf_name!r} has no llama counterpart")


def llama_config(gguf_file: GGUFFile):
    """The ``LlamaConfig`` transformers builds from this file's metadata."""
    from transformers import LlamaConfig

    meta = gguf_file.metadata
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"{gguf_file.path}: architecture {arch!r}, only 'llama' is supported")

    def need(key: str) -> Any:
        if f"llama.{key}" not in meta:
            raise GGUFError(f"{gguf_file.path}: metadata key llama.{key} is missing")
        return meta[f"llama.{key}"]

    vocab = meta.get("llama.vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=need("embedding_length"),
        intermediate_size=need("feed_forward_length"),
        num_hidden_layers=need("block_count"),
        num_attention_heads=need("attention.head_count"),
        num_key_value_heads=meta.get("llama.attention.head_count_kv", need("attention.head_count")),
        max_position_embeddings=need("context_length"),
        rms_norm_eps=need("attention.layer_norm_rms_epsilon"),
        tie_word_embeddings="output.weight" not in gguf_file.tensors,
        architectures=["LlamaForCausalLM"],
        dtype="float32",
    )
    if "llama.rope.dimension_count" in meta:
        kwargs["head_dim"] = meta["llama.rope.dimension_count"]
    if "llama.rope.freq_base" in meta:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": meta["llama.rope.freq_base"]}
    for ours, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        if f"tokenizer.ggml.{key}_token_id" in meta:
            kwargs[f"{ours}_token_id"] = meta[f"tokenizer.ggml.{key}_token_id"]
    if "general.name" in meta:
        kwargs["_model_name_or_path"] = meta["general.name"]
    return LlamaConfig(**kwargs)


def llama_state_dict(gguf_file: GGUFFile, config) -> dict[str, Any]:
    """fp32 transformers weights, with the rotary interleave of q/k undone (a tied head has no tensor)."""
    import torch
    from tqdm.auto import tqdm

    state = {}
    for tensor in tqdm(gguf_file.tensors.values(), desc="de-quantising GGUF tensors", leave=False):
        weight = tensor_as_float32(gguf_file, tensor)
        if ".attn_q." in tensor.name:
            weight = _unpermute_rotary(weight, config.num_attention_heads)
        elif ".attn_k." in tensor.name:
            weight = _unpermute_rotary(weight, config.num_key_value_heads)
        state[hf_tensor_name(tensor.name)] = torch.from_numpy(weight)
    return state


def convert_llama_gguf(gguf_path: str | Path, out_dir: str | Path) -> None:
    """Write config, generation config, fp32 safetensors and the tokenizer of a llama GGUF to ``out_dir``."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig, TokenizersBackend

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    gguf_file = read_gguf(gguf_path)
    config = llama_config(gguf_file)
    state = llama_state_dict(gguf_file, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    TokenizersBackend.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(out_dir)
