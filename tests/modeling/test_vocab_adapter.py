"""The ``vocab_ctc`` speech adapter: exact posterior mixing, CTC logits, and its place in the model."""

import pytest
import torch

from funaudiochat.config import FunAudioChatAudioEncoderConfig, tiny_config
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.modeling.vocab_adapter import VocabCTCAdapter
from funaudiochat.testing import synthetic_batch


def ctc_model(seed=0, ctc_vocab_size=None):
    cfg = tiny_config()
    cfg.audio_config.continuous_adapter = "vocab_ctc"
    cfg.audio_config.ctc_vocab_size = ctc_vocab_size
    torch.manual_seed(seed)
    return FunAudioChatForConditionalGeneration(cfg)


def test_a_confident_posterior_gives_the_token_embedding_and_the_blank_its_vector():
    table = torch.eye(4, 6)  # token v embeds to unit vector e_v
    ad = VocabCTCAdapter(6)
    with torch.no_grad():
        ad.blank_query.copy_(torch.tensor([0, 0, 0, 0, 1.0, 0]))
        ad.blank_embed.copy_(torch.tensor([0, 0, 0, 0, 0, 7.0]))
        ad.logit_scale.fill_(200.0)
    x = torch.tensor([[0, 0, 1.0, 0, 0, 0], [0, 0, 0, 0, 1.0, 0]])  # token 2, then the blank
    logits = ad.logits(x, table)
    assert logits.shape == (2, 5)
    assert logits.argmax(-1).tolist() == [2, 4]  # the blank is the last class
    torch.testing.assert_close(ad(x, table), torch.tensor([[0, 0, 1.0, 0, 0, 0], [0, 0, 0, 0, 0, 7.0]]))


def test_a_split_posterior_mixes_the_embeddings_in_proportion():
    table = torch.eye(2, 3)
    ad = VocabCTCAdapter(3)  # blank query 0: logit 0 like the others for x = 0
    out = ad(torch.zeros(1, 3), table)
    torch.testing.assert_close(out, torch.tensor([[1 / 3, 1 / 3, 0.0]]))  # blank embed is zero at init


def test_speech_ctc_logits_shapes_and_the_vocabulary_limit():
    model = ctc_model(ctc_vocab_size=300).eval()
    batch = synthetic_batch(model.config, batch_size=2)
    feats, mask = batch["input_features"], batch["feature_attention_mask"]
    logits, lens = model.speech_ctc_logits(feats, mask)
    _, lens25 = model.encode_speech(feats, mask)
    assert lens.tolist() == [(int(n) + 4) // 5 for n in lens25]
    assert logits.shape == (2, int(lens.max()), 301)


def test_user_audio_reaches_the_backbone_as_the_adapter_output():
    model = ctc_model().eval()
    batch = synthetic_batch(model.config, batch_size=1)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(batch["input_ids"])
        audio = model.embed_audio(
            batch["input_ids"], embeds, batch["speech_ids"], batch["speech_attention_mask"],
            batch["input_features"], batch["feature_attention_mask"], batch["feature_exist_mask"],
        )
        feats, _ = model.encode_speech(batch["input_features"], batch["feature_attention_mask"])
        expected = model.read_user_speech(model.audio_tower.group_continuous(feats))[0]
    run = audio.runs[0]  # the user's audio item comes first
    got = audio.inputs_embeds[run.row, run.start : run.end]
    torch.testing.assert_close(got, expected[: run.length])
    # each position is a convex mix of token rows and the blank vector: inside the table's range
    table = model.ctc_table().detach()
    assert float(got.abs().max()) <= float(table.abs().max()) + 1e-5


def test_forward_backward_trains_the_adapter():
    model = ctc_model()
    out = model(**synthetic_batch(model.config, batch_size=2))
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("speech_vocab_adapter.")}
    assert set(grads) == {
        "speech_vocab_adapter.blank_query", "speech_vocab_adapter.blank_embed", "speech_vocab_adapter.logit_scale",
    }
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads.values())
    assert model.continuous_audio_tower.proj.weight.grad.abs().sum() > 0


def test_save_and_reload_keep_the_adapter(tmp_path):
    model = ctc_model(seed=3).eval()
    with torch.no_grad():
        model.speech_vocab_adapter.blank_embed.normal_()
        model.speech_vocab_adapter.logit_scale.fill_(2.5)
    model.save_pretrained(tmp_path)
    again = FunAudioChatForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert again.config.audio_config.continuous_adapter == "vocab_ctc"
    batch = synthetic_batch(model.config, batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits)


def test_the_released_layout_has_no_adapter_parameters():
    model = FunAudioChatForConditionalGeneration(tiny_config())
    assert model.speech_vocab_adapter is None
    assert not any(n.startswith("speech_vocab_adapter") for n in model.state_dict())
    x = torch.randn(1, 3, model.config.text_config.hidden_size)
    assert model.read_user_speech(x) is x
    with pytest.raises(ValueError, match="continuous_adapter='vocab_ctc'"):
        model.speech_ctc_logits(torch.zeros(1, 80, 100))


@pytest.mark.parametrize("field, value, message", [
    ("continuous_adapter", "mlp", "continuous_adapter must be one of"),
    ("ctc_vocab_size", 0, "ctc_vocab_size must be >= 1"),
])
def test_bad_adapter_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        FunAudioChatAudioEncoderConfig(**{field: value})


def test_assembly_from_parts_reads_over_the_backbones_own_vocabulary(tmp_path):
    from funaudiochat.modeling.build import assemble_from_parts
    from funaudiochat.testing import save_tiny_backbone

    save_tiny_backbone(tmp_path / "llm")
    srh = tiny_config().audio_config.crq_transformer_config
    model, tok = assemble_from_parts(tmp_path / "llm", srh_config=srh, continuous_adapter="vocab_ctc")
    first_audio = tok.convert_tokens_to_ids("<|AUDIO|>")
    assert model.config.audio_config.ctc_vocab_size == first_audio
    assert model.ctc_table().shape[0] == first_audio  # the added audio tokens are not CTC classes
    linear, _ = assemble_from_parts(tmp_path / "llm", srh_config=srh)
    assert linear.speech_vocab_adapter is None and linear.config.audio_config.ctc_vocab_size is None
