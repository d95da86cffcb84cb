"""Core-Cocktail merge: exact arithmetic, sharding, dtypes, errors and atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from funaudiochat.training import merge as merge_mod
from funaudiochat.training.merge import MergeError, list_tensors, merge_checkpoints, merge_lora


def write_ckpt(folder: Path, tensors: dict[str, torch.Tensor], shards: list[list[str]] | None = None) -> Path:
    """Write tensors as one model.safetensors or as the given shards with an index."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "funaudiochat", "src": folder.name}))
    if shards is None:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    weight_map = {}
    for i, names in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in names}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in names})
    assert set(weight_map) == set(tensors)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def load_dir(folder: Path) -> dict[str, torch.Tensor]:
    files = list_tensors(folder)
    out = {}
    for path in set(files.values()):
        out.update(load_file(str(path)))
    return out


BASE = {
    "language_model.model.embed.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
    "language_model.lm_head.weight": torch.tensor([[0.0, -2.0]]),
    "audio_tower.proj.weight": torch.tensor([[100.0]]),  # ignored: outside prefixes
}
TUNED = {
    "language_model.model.embed.weight": torch.tensor([[3.0, 6.0], [-1.0, 0.0]]),
    "language_model.lm_head.weight": torch.tensor([[4.0, 2.0]]),
    "audio_tower.proj.weight": torch.tensor([[7.0]]),
    "audio_invert_tower.step": torch.tensor([5], dtype=torch.int64),
}


@pytest.mark.parametrize(
    ("alpha", "embed", "head"),
    [
        (0.0, [[1.0, 2.0], [3.0, 4.0]], [[0.0, -2.0]]),
        (0.5, [[2.0, 4.0], [1.0, 2.0]], [[2.0, 0.0]]),
        (1.0, [[3.0, 6.0], [-1.0, 0.0]], [[4.0, 2.0]]),
        (0.25, [[1.5, 3.0], [2.0, 3.0]], [[1.0, -1.0]]),
    ],
)
def test_exact_arithmetic(tmp_path: Path, alpha: float, embed, head) -> None:
    base = write_ckpt(tmp_path / "base", BASE)
    tuned = write_ckpt(tmp_path / "tuned", TUNED)
    out = merge_checkpoints(base, tuned, tmp_path / "out", alpha=alpha)
    got = load_dir(out)
    assert set(got) == set(TUNED)
    assert torch.equal(got["language_model.model.embed.weight"], torch.tensor(embed))
    assert torch.equal(got["language_model.lm_head.weight"], torch.tensor(head))
    # outside the prefixes: always the tuned value
    assert torch.equal(got["audio_tower.proj.weight"], torch.tensor([[7.0]]))
    assert torch.equal(got["audio_invert_tower.step"], torch.tensor([5]))
    # non-weight files come from tuned, provenance is recorded
    assert json.loads((out / "config.json").read_text())["src"] == "tuned"
    info = json.loads((out / "merge_info.json").read_text())
    assert info["alpha"] == alpha and info["num_merged"] == 2 and info["num_tensors"] == 4
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()


def test_sharded_inputs_different_sharding_and_sharded_output(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    names = [f"language_model.model.layers.{i}.w" for i in range(6)] + ["continuous_audio_tower.conv.w"]
    base_t = {n: torch.randn(8, 4, generator=g) for n in names}
    tuned_t = {n: torch.randn(8, 4, generator=g) for n in names}
    base = write_ckpt(tmp_path / "base", base_t, shards=[names[:1], names[1:5], names[5:]])
    tuned = write_ckpt(tmp_path / "tuned", tuned_t, shards=[names[:4], names[4:]])
    # 8*4 fp32 = 128 bytes per tensor -> 2 tensors per output shard -> 4 shards
    out = merge_checkpoints(base, tuned, tmp_path / "out", alpha=0.3, max_shard_bytes=256)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard_names = sorted(set(index["weight_map"].values()))
    assert shard_names == [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
    assert index["metadata"]["total_size"] == 7 * 128
    got = load_dir(out)
    for n in names:
        if n.startswith("language_model."):
            want = 0.3 * tuned_t[n] + 0.7 * base_t[n]
        else:
            want = tuned_t[n]
        assert torch.equal(got[n], want), n
    assert sorted(p.name for p in out.iterdir()) == sorted(shard_names + ["model.safetensors.index.json", "config.json", "merge_info.json"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_preserved_and_computed_in_fp32(tmp_path: Path, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    b = torch.randn(64, 64, generator=g).to(dtype)
    t = torch.randn(64, 64, generator=g).to(dtype)
    name = "language_model.model.w"
    merge_checkpoints(write_ckpt(tmp_path / "b", {name: b}), write_ckpt(tmp_path / "t", {name: t}), tmp_path / "o", alpha=0.3)
    got = load_dir(tmp_path / "o")[name]
    assert got.dtype == dtype
    want = (0.3 * t.float() + 0.7 * b.float()).to(dtype)
    assert torch.equal(got, want)
    naive = 0.3 * t + 0.7 * b  # half-precision arithmetic rounds three times
    assert not torch.equal(got, naive), "test would not detect half-precision arithmetic"


def test_base_llm_prefix_map(tmp_path: Path) -> None:
    base = write_ckpt(
        tmp_path / "base",
        {"model.embed.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "lm_head.weight": torch.tensor([[0.0, -2.0]])},
    )
    tuned = write_ckpt(tmp_path / "tuned", TUNED)
    with pytest.raises(MergeError, match=r"tensor 'language_model.model.embed.weight' is missing in base"):
        merge_checkpoints(base, tuned, tmp_path / "out0")
    out = merge_checkpoints(
        base,
        tuned,
        tmp_path / "out",
        base_prefix_map={"model.": "language_model.model.", "lm_head.": "language_model.lm_head."},
    )
    got = load_dir(out)
    assert torch.equal(got["language_model.model.embed.weight"], torch.tensor([[2.0, 4.0], [1.0, 2.0]]))
    assert torch.equal(got["language_model.lm_head.weight"], torch.tensor([[2.0, 0.0]]))


def test_mismatch_errors_name_tensor(tmp_path: Path) -> None:
    base_t = dict(BASE)
    base_t["language_model.lm_head.weight"] = torch.zeros(2, 2)
    base_t["language_model.model.embed.weight"] = BASE["language_model.model.embed.weight"].half()
    base_t["language_model.extra.bias"] = torch.zeros(3)
    base = write_ckpt(tmp_path / "base", base_t)
    tuned = write_ckpt(tmp_path / "tuned", TUNED)
    with pytest.raises(MergeError) as err:
        merge_checkpoints(base, tuned, tmp_path / "out")
    msg = str(err.value)
    assert "tensor 'language_model.lm_head.weight': shape mismatch tuned [1, 2] vs base [2, 2]" in msg
    assert "tensor 'language_model.model.embed.weight': dtype mismatch tuned F32 vs base F16" in msg
    assert "base tensor 'language_model.extra.bias' (as 'language_model.extra.bias') is missing in tuned" in msg
    assert not (tmp_path / "out").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    base = write_ckpt(tmp_path / "base", BASE)
    tuned = write_ckpt(tmp_path / "tuned", TUNED)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        merge_checkpoints(base, tuned, tmp_path / "out", alpha=1.5)
    with pytest.raises(FileNotFoundError, match="neither model.safetensors.index.json nor model.safetensors"):
        merge_checkpoints(base, tmp_path, tmp_path / "out")
    with pytest.raises(MergeError, match="nothing to merge"):
        merge_checkpoints(base, tuned, tmp_path / "out", prefixes=("vision.",))
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        merge_checkpoints(base, tuned, tmp_path / "exists")


def test_atomic_when_failing_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(2)
    names = [f"language_model.l{i}" for i in range(4)]
    ts = {n: torch.randn(4, 4, generator=g) for n in names}
    base = write_ckpt(tmp_path / "base", ts)
    tuned = write_ckpt(tmp_path / "tuned", ts)
    real_save = merge_mod.save_file
    calls = []

    def failing_save(tensors, path, metadata=None):  # noqa: ANN001
        calls.append(path)
        if len(calls) == 2:  # first shard is on disk already, second fails
            raise OSError("disk full")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(merge_mod, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        merge_checkpoints(base, tuned, tmp_path / "out", max_shard_bytes=64)
    assert len(calls) == 2
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".tmp-out").exists()
    # overwrite keeps the old folder when the new merge fails, and replaces it when it succeeds
    monkeypatch.setattr(merge_mod, "save_file", real_save)
    merge_checkpoints(base, tuned, tmp_path / "out", alpha=1.0)
    merge_checkpoints(base, tuned, tmp_path / "out", alpha=0.0, overwrite=True)
    assert json.loads((tmp_path / "out" / "merge_info.json").read_text())["alpha"] == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "out", "tuned"]


def test_merge_lora() -> None:
    w = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])  # [out=2, in=3]
    a = torch.tensor([[1.0, 2.0, 3.0]])  # [r=1, in=3]
    b = torch.tensor([[1.0], [-2.0]])  # [out=2, r=1]
    # delta = b @ a = [[1, 2, 3], [-2, -4, -6]]; alpha*scaling = 0.5*2 = 1
    got = merge_lora(w, a, b, scaling=2.0, alpha=0.5)
    assert torch.equal(got, torch.tensor([[2.0, 2.0, 5.0], [-2.0, -3.0, -7.0]]))
    assert torch.equal(merge_lora(w, a, b, scaling=2.0, alpha=0.0), w)
    assert merge_lora(w.bfloat16(), a.bfloat16(), b.bfloat16(), 2.0, 0.5).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"LoRA shape mismatch: W\[2, 3\] needs A\[r, 3\] and B\[2, r\], got A\[1, 3\] and B\[3, 1\]"):
        merge_lora(w, a, torch.ones(3, 1), 1.0)


def test_interpolate_chunked_matches_formula() -> None:
    g = torch.Generator().manual_seed(3)
    t = torch.randn(5, 13, generator=g).bfloat16()
    b = torch.randn(5, 13, generator=g).bfloat16()
    want = (0.7 * t.float() + 0.3 * b.float()).bfloat16()
    assert torch.equal(merge_mod.interpolate(t, b, 0.7, chunk_elems=7), want)
    assert torch.equal(merge_mod.interpolate(t.double(), b.double(), 0.7), 0.7 * t.double() + (1 - 0.7) * b.double())


def test_cli_base_llm(tmp_path: Path) -> None:
    base = write_ckpt(
        tmp_path / "base",
        {"model.embed.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "lm_head.weight": torch.tensor([[0.0, -2.0]])},
    )
    tuned = write_ckpt(tmp_path / "tuned", TUNED)
    merge_mod.main([str(base), str(tuned), str(tmp_path / "out"), "--alpha", "0.25", "--base-llm"])
    got = load_dir(tmp_path / "out")
    assert torch.equal(got["language_model.lm_head.weight"], torch.tensor([[1.0, -1.0]]))
