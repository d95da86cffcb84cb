"""The full model on tiny configs: forward/backward, save/load, Auto classes, assembly from parts."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import funaudiochat  # noqa: F401  (registers the Auto classes)
from funaudiochat.config import FunAudioChatConfig, tiny_config
from funaudiochat.modeling.build import EncoderSpec, assemble_from_parts
from funaudiochat.modeling.encoder import SpeechEncoder
from funaudiochat.modeling.model import CheckpointMismatchError, FunAudioChatForConditionalGeneration
from funaudiochat.testing import save_tiny_backbone, synthetic_batch, word_tokenizer


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return FunAudioChatForConditionalGeneration(tiny_config(**kw))


@pytest.mark.parametrize(
    "k, mode, backbone", [(1, "mean", "qwen3"), (2, "mean", "qwen3"), (5, "mean", "qwen3"), (5, "concat", "llama"), (2, "concat", "qwen3")]
)
def test_forward_backward_reaches_every_trainable_module(k, mode, backbone):
    model = make(group_size=k, grouping_mode=mode, backbone=backbone)
    batch = synthetic_batch(model.config, batch_size=2)
    out = model(**batch)
    b, length = batch["input_ids"].shape
    assert out.logits.shape == (b, length, model.config.text_config.vocab_size)
    assert out.speech_logits.shape == (b, length * k, model.config.audio_config.codebook_size)
    assert torch.isfinite(out.text_loss) and torch.isfinite(out.speech_loss)
    torch.testing.assert_close(out.loss, out.text_loss + out.speech_loss)
    out.loss.backward()
    unused = {"continuous_audio_tower.audio_bos_eos_token.weight"}  # in the released weights, never used
    no_grad = [
        n for n, p in model.named_parameters()
        if n not in unused and (p.grad is None or not bool(p.grad.abs().sum() > 0))
    ]
    assert no_grad == []


def test_loss_weights_apply():
    model = make()
    model.config.text_loss_weight, model.config.speech_loss_weight = 0.3, 2.0
    out = model(**synthetic_batch(model.config))
    torch.testing.assert_close(out.loss, 0.3 * out.text_loss + 2.0 * out.speech_loss)


def test_padding_rows_do_not_change_results():
    """Row 1 alone gives the same losses' logits as in a right-padded batch with row 0."""
    model = make().eval()
    batch = synthetic_batch(model.config, batch_size=2)
    with torch.no_grad():
        full = model(**batch)
        n = int(batch["attention_mask"][1].sum())
        single = {
            "input_ids": batch["input_ids"][1:, :n], "attention_mask": batch["attention_mask"][1:, :n],
            "labels": batch["labels"][1:, :n],
            "input_features": batch["input_features"][1:], "feature_attention_mask": batch["feature_attention_mask"][1:],
            "feature_exist_mask": batch["feature_exist_mask"][2:],
            "speech_ids": batch["speech_ids"][2:], "speech_attention_mask": batch["speech_attention_mask"][2:],
            "text_ids": batch["text_ids"][2:], "text_attention_mask": batch["text_attention_mask"][2:],
        }
        alone = model(**single)
    torch.testing.assert_close(full.logits[1, :n], alone.logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full.speech_logits[1, : 5 * n], alone.speech_logits[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shard", [None, "300KB"])
def test_save_then_load_gives_identical_logits_and_losses(tmp_path, shard):
    model = make().eval()
    batch = synthetic_batch(model.config)
    with torch.no_grad():
        before = model(**batch)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path, **kwargs)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    if shard:
        assert "model.safetensors.index.json" in files
    loaded = FunAudioChatForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.audio_invert_tower.lm_head.weight is loaded.audio_tower.embed_tokens.weight
    with torch.no_grad():
        after = loaded(**batch)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.speech_logits, after.speech_logits)
    assert torch.equal(before.loss, after.loss)


def test_auto_classes_resolve(tmp_path):
    make().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "funaudiochat"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), FunAudioChatConfig)
    for auto in (AutoModel, AutoModelForCausalLM):
        assert isinstance(auto.from_pretrained(tmp_path), FunAudioChatForConditionalGeneration)


def test_pickle_weights_are_never_loaded(tmp_path):
    model = make()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        FunAudioChatForConditionalGeneration.from_pretrained(tmp_path)


def test_unknown_and_missing_keys_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    make().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["audio_tower.not_a_param"] = torch.zeros(3)
    del weights["audio_invert_tower.pre_matching.bias"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError) as err:
        FunAudioChatForConditionalGeneration.from_pretrained(tmp_path)
    assert "audio_invert_tower.pre_matching.bias" in str(err.value)
    assert "audio_tower.not_a_param" in str(err.value)


def test_config_rejects_width_mismatch():
    cfg = tiny_config()
    with pytest.raises(ValueError, match="must equal the backbone's hidden_size"):
        FunAudioChatConfig(audio_config=cfg.audio_config.to_dict() | {"output_dim": 32}, text_config=cfg.text_config)


def test_assemble_from_pretrained_backbone_and_encoder(tmp_path):
    from transformers import AutoModelForCausalLM as LM
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging as transformers_logging

    save_tiny_backbone(tmp_path / "llm")
    torch.manual_seed(1)
    whisper_like = SpeechEncoder(tiny_config().audio_config)
    enc_state = {k: v for k, v in whisper_like.state_dict().items() if not k.startswith(("proj.", "audio_bos_eos"))}
    spec = EncoderSpec(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                       state_dict=enc_state)
    with CaptureLogger(transformers_logging.get_logger("transformers.modeling_utils")) as log:
        model, tok = assemble_from_parts(tmp_path / "llm", encoder=spec, srh_config=tiny_config().audio_config.crq_transformer_config)
    assert "without finding the associated sub-model" not in log.out  # no warning users cannot act on
    # the tokenizer learned the audio tokens and the config knows their ids
    assert tok.convert_tokens_to_ids("<|AUDIO|>") == model.config.audio_token_index
    assert tok.convert_tokens_to_ids("<|sil|>") == model.config.sil_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    # the encoder carries the given weights
    torch.testing.assert_close(model.continuous_audio_tower.conv1.weight, whisper_like.conv1.weight)
    # the backbone still computes what the pretrained LM computes on text
    reference = LM.from_pretrained(tmp_path / "llm").eval()
    ids = tok("what is the capital of france ?", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = model.eval()(input_ids=ids).logits
        theirs = reference(input_ids=ids).logits
    torch.testing.assert_close(ours[..., : theirs.shape[-1]], theirs)
    # and the assembled model trains, saves and reloads
    batch = synthetic_batch(model.config)
    model.train()(**batch).loss.backward()
    model.save_pretrained(tmp_path / "assembled")
    FunAudioChatForConditionalGeneration.from_pretrained(tmp_path / "assembled")


@pytest.mark.parametrize("tied", [True, False])
def test_a_skeleton_assembled_without_init_loads_into_the_same_model(tmp_path, tied):
    """``init_fresh_parts=False`` (the default model's loader) skips the random draws only: once the
    saved tensors are in, parameters, computed buffers, ties, config and outputs equal a normal
    assembly's.  A tied table grows without transformers' resize, an untied one through it."""
    save_tiny_backbone(tmp_path / "llm", tied=tied)
    kw = dict(encoder=EncoderSpec(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                                  encoder_ffn_dim=128),
              srh_config=tiny_config().audio_config.crq_transformer_config, continuous_adapter="vocab_ctc",
              ctc_spelling_buckets=32)
    torch.manual_seed(0)
    normal, _ = assemble_from_parts(tmp_path / "llm", **kw)
    bare, _ = assemble_from_parts(tmp_path / "llm", init_fresh_parts=False, **kw)
    vocab = bare.config.audio_config.ctc_vocab_size  # rows past it are the audio tokens' new rows
    for name, p in bare.language_model.state_dict().items():  # the loaded backbone is kept as loaded
        assert torch.equal(p[:vocab], normal.language_model.state_dict()[name][:vocab]), name
    if tied:
        assert not bare.get_input_embeddings().weight[vocab:].any()  # the added rows: zeros, not drawn
    assert bare.config.to_json_string() == normal.config.to_json_string()
    for lm in (bare.language_model, normal.language_model):
        assert lm.vocab_size == lm.get_input_embeddings().num_embeddings == lm.get_output_embeddings().out_features
    bare.load_state_dict(normal.state_dict(), strict=True)
    for model in (normal, bare):
        model.eval()
    for (name, b), (_, want) in zip(bare.named_buffers(), normal.named_buffers(), strict=True):
        assert torch.equal(b, want), name  # the non-persistent ones too (sinusoids, rotary frequencies)
    assert not any(p.is_meta for p in bare.parameters()) and not any(b.is_meta for b in bare.buffers())

    def ties(m):
        groups = {}
        for name, p in m.named_parameters(remove_duplicate=False):
            groups.setdefault(p.data_ptr(), []).append(name)
        return sorted(sorted(g) for g in groups.values() if len(g) > 1)

    assert ["audio_invert_tower.lm_head.weight", "audio_tower.embed_tokens.weight"] in ties(bare)
    assert ties(bare) == ties(normal)
    assert [n for n, p in bare.named_parameters() if p.requires_grad] == [
        n for n, p in normal.named_parameters() if p.requires_grad]
    batch = synthetic_batch(normal.config, seed=3)
    with torch.no_grad():
        want, got = normal(**batch), bare(**batch)
    assert torch.equal(got.logits, want.logits) and torch.equal(got.speech_logits, want.speech_logits)


def test_assemble_rejects_wrong_encoder_weights(tmp_path):
    save_tiny_backbone(tmp_path / "llm")
    spec = EncoderSpec(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                       state_dict={"conv1.weight": torch.zeros(64, 80, 3), "bogus": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected \\['bogus'\\]"):
        assemble_from_parts(tmp_path / "llm", encoder=spec, srh_config=tiny_config().audio_config.crq_transformer_config)


def test_labelled_logits_only_gives_the_same_losses_and_gradients():
    model = make()
    batch = synthetic_batch(model.config, batch_size=3, seed=4)
    full = model(**batch)
    full.loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    lean = model(**batch, labelled_logits_only=True)
    lean.loss.backward()
    assert lean.logits is None and full.logits is not None
    torch.testing.assert_close(lean.text_loss, full.text_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lean.speech_loss, full.speech_loss)
    for n, p in model.named_parameters():
        if n in want:
            torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=n)
    with pytest.raises(ValueError, match="labelled_logits_only needs labels"):
        model(**{k: v for k, v in batch.items() if k != "labels"}, labelled_logits_only=True)
