"""The released Fun-Audio-Chat-8B layout: names and shapes, and loading a checkpoint written in it.

The expected names are written out here from the design notes (docs/architecture.md), not taken
from our model, so a renamed or reshaped module fails these tests.
"""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import funaudiochat  # noqa: F401
from funaudiochat.config import released_8b_config
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration


def released_names(
    *, n_mels=128, d=1280, enc_layers=32, ffn=5120, hidden=4096, k=5, codebook=6565,
    srh_hidden=1024, srh_layers=28, srh_heads=16, srh_kv=8, srh_head_dim=128, srh_ffn=3072,
    llm_layers=36, llm_heads=32, llm_kv=8, llm_head_dim=128, llm_ffn=12288, vocab=151936,
) -> dict[str, tuple[int, ...]]:
    """Every tensor a released-layout checkpoint stores (the tied SRH head is not stored)."""
    n: dict[str, tuple[int, ...]] = {}
    e = "continuous_audio_tower."
    n[e + "conv1.weight"], n[e + "conv1.bias"] = (d, n_mels, 3), (d,)
    n[e + "conv2.weight"], n[e + "conv2.bias"] = (d, d, 3), (d,)
    for i in range(enc_layers):
        p = f"{e}layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            n[p + f"self_attn.{proj}.weight"] = (d, d)
            if proj != "k_proj":
                n[p + f"self_attn.{proj}.bias"] = (d,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            n[p + f"{norm}.weight"], n[p + f"{norm}.bias"] = (d,), (d,)
        n[p + "fc1.weight"], n[p + "fc1.bias"] = (ffn, d), (ffn,)
        n[p + "fc2.weight"], n[p + "fc2.bias"] = (d, ffn), (d,)
    n[e + "ln_post.weight"], n[e + "ln_post.bias"] = (d,), (d,)
    n[e + "proj.weight"], n[e + "proj.bias"] = (hidden, d), (hidden,)
    n[e + "audio_bos_eos_token.weight"] = (2, hidden)
    n["audio_tower.embed_tokens.weight"] = (codebook, hidden)
    n["audio_tower.output_matching.weight"] = (hidden, hidden)
    n["audio_tower.continual_output_matching.weight"] = (hidden, hidden)
    s = "audio_invert_tower."
    n[s + "pre_matching.weight"], n[s + "pre_matching.bias"] = (k * hidden, hidden), (k * hidden,)
    n[s + "input_matching.weight"] = (srh_hidden, hidden)
    n[s + "output_matching.weight"] = (hidden, srh_hidden)

    def qwen3_layers(prefix, layers, width, heads, kv, head_dim, ffn_dim):
        for i in range(layers):
            p = f"{prefix}layers.{i}."
            n[p + "self_attn.q_proj.weight"] = (heads * head_dim, width)
            n[p + "self_attn.k_proj.weight"] = (kv * head_dim, width)
            n[p + "self_attn.v_proj.weight"] = (kv * head_dim, width)
            n[p + "self_attn.o_proj.weight"] = (width, heads * head_dim)
            n[p + "self_attn.q_norm.weight"] = n[p + "self_attn.k_norm.weight"] = (head_dim,)
            n[p + "mlp.gate_proj.weight"] = n[p + "mlp.up_proj.weight"] = (ffn_dim, width)
            n[p + "mlp.down_proj.weight"] = (width, ffn_dim)
            n[p + "input_layernorm.weight"] = n[p + "post_attention_layernorm.weight"] = (width,)
        n[prefix + "norm.weight"] = (width,)

    qwen3_layers(s + "crq_transformer.", srh_layers, srh_hidden, srh_heads, srh_kv, srh_head_dim, srh_ffn)
    qwen3_layers("language_model.model.", llm_layers, hidden, llm_heads, llm_kv, llm_head_dim, llm_ffn)
    n["language_model.model.embed_tokens.weight"] = (vocab, hidden)
    n["language_model.lm_head.weight"] = (vocab, hidden)
    return n


TIED = "audio_invert_tower.lm_head.weight"


def test_8b_layout_on_meta_device():
    with torch.device("meta"):
        model = FunAudioChatForConditionalGeneration(released_8b_config())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != TIED}
    expected = released_names()
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    total = sum(p.numel() for p in model.parameters())  # tied head counted once
    assert 9.3e9 < total < 9.5e9, total  # the design notes: about 9.42 B


TINY = dict(
    n_mels=8, d=16, enc_layers=2, ffn=32, hidden=24, k=5, codebook=6565, srh_hidden=16, srh_layers=2,
    srh_heads=2, srh_kv=1, srh_head_dim=8, srh_ffn=32, llm_layers=2, llm_heads=4, llm_kv=2,
    llm_head_dim=6, llm_ffn=48, vocab=160,
)


def released_style_config() -> dict:
    """A config.json as the released checkpoint writes it (plain JSON, model_type funaudiochat)."""
    t = TINY
    return {
        "architectures": ["FunAudioChatForConditionalGeneration"],
        "model_type": "funaudiochat",
        "audio_token_index": 150,
        "ignore_index": -100,
        "hidden_size": t["hidden"],
        "use_cache": False,
        "audio_config": {
            "model_type": "funaudiochat_audio_encoder",
            "num_mel_bins": t["n_mels"], "encoder_layers": t["enc_layers"], "encoder_attention_heads": 2,
            "encoder_ffn_dim": t["ffn"], "d_model": t["d"], "max_source_positions": 1500, "n_window": 100,
            "output_dim": t["hidden"], "group_size": 5, "codebook_size": 6565, "bos_token_id": 6561,
            "eos_token_id": 6562, "pad_token_id": 6563, "continuous_features_mode": "replace",
            "enable_audio_invert_tower": True,
            "crq_transformer_config": {
                "model_type": "qwen3", "hidden_size": t["srh_hidden"], "num_hidden_layers": t["srh_layers"],
                "num_attention_heads": t["srh_heads"], "num_key_value_heads": t["srh_kv"], "head_dim": t["srh_head_dim"],
                "intermediate_size": t["srh_ffn"], "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                "max_position_embeddings": 32768, "vocab_size": 151936, "tie_word_embeddings": True,
            },
        },
        "text_config": {
            "model_type": "qwen3", "vocab_size": t["vocab"], "hidden_size": t["hidden"],
            "intermediate_size": t["llm_ffn"], "num_hidden_layers": t["llm_layers"],
            "num_attention_heads": t["llm_heads"], "num_key_value_heads": t["llm_kv"], "head_dim": t["llm_head_dim"],
            "max_position_embeddings": 262144, "rope_theta": 5000000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151643,
            "audio_bos_index": 151, "audio_eos_index": 152, "sil_index": 154,
        },
    }


def write_released_checkpoint(path, sharded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(shape, generator=g) for k, shape in released_names(**TINY).items()}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(released_style_config(), indent=2))
    if not sharded:
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        return tensors
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, path / file, metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


@pytest.mark.parametrize("sharded", [False, True])
def test_tiny_released_checkpoint_loads_unchanged(tmp_path, sharded):
    tensors = write_released_checkpoint(tmp_path / "ckpt", sharded)
    model, info = FunAudioChatForConditionalGeneration.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    state = model.state_dict()
    for name, value in tensors.items():
        assert torch.equal(state[name], value), name
    # the SRH head is tied to the speech embedding after loading
    assert model.audio_invert_tower.lm_head.weight is model.audio_tower.embed_tokens.weight
    assert model.config.text_config.sil_index == 154 and model.config.audio_token_index == 150
    # the causal-LM auto class finds it too
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert isinstance(auto, FunAudioChatForConditionalGeneration)
