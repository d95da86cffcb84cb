"""The ``vocab_ctc`` speech adapter: exact posterior mixing, CTC logits, and its place in the model."""

import pytest
import torch

from funaudiochat.config import FunAudioChatAudioEncoderConfig, tiny_config
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.modeling.vocab_adapter import VocabCTCAdapter, spelling_bags
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


@pytest.mark.parametrize("fields, message", [
    ({"continuous_adapter": "mlp"}, "continuous_adapter must be one of"),
    ({"ctc_vocab_size": 0}, "ctc_vocab_size must be >= 1"),
    ({"ctc_spelling_buckets": -1}, "must be >= 0"),
    ({"ctc_spelling_buckets": 64, "ctc_spelling_grams": 10}, "needs continuous_adapter='vocab_ctc'"),
    ({"ctc_spelling_buckets": 64, "continuous_adapter": "vocab_ctc"}, "ctc_spelling_grams >= 1"),
])
def test_bad_adapter_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        FunAudioChatAudioEncoderConfig(**fields)


def bag_sets(index, offsets):
    ends = offsets.tolist()[1:] + [index.numel()]
    return [index[a:b].tolist() for a, b in zip(offsets.tolist(), ends)]


def test_spelling_bags_fold_case_and_share_the_ngrams_of_pieces():
    index, offsets = spelling_bags([" France", " f", "rance", "xyz", ""], buckets=1 << 20)
    bags = bag_sets(index, offsets)
    assert len(bags[0]) == 7 + 6 + 5  # "_france": letters, bigrams, trigrams
    assert len(bags[1]) == 2 + 1 and len(bags[4]) == 1  # "_f"; the empty token's own bucket
    assert set(bags[2]) < set(bags[0]) and set(bags[1]) < set(bags[0])
    assert not set(bags[3]) & set(bags[0])
    # crc32, not Python's salted hash: the same buckets in every process
    assert bag_sets(*spelling_bags([" France"], 1 << 20))[0] == bags[0]
    assert spelling_bags(["ab"], 8)[0].tolist() == [v % 8 for v in spelling_bags(["ab"], 1 << 20)[0].tolist()]
    with pytest.raises(ValueError, match="buckets must be >= 1"):
        spelling_bags(["a"], 0)


def test_a_spelling_table_scores_each_token_by_its_ngrams_and_starts_at_zero():
    tokens = [" cat", " hat", "zz"]
    index, offsets = spelling_bags(tokens, 97)
    ad = VocabCTCAdapter(4, spelling_buckets=97, spelling_grams=index.numel(), vocab_size=3)
    ad.set_spelling(tokens)
    table = torch.randn(3, 4)
    x = torch.randn(2, 4)
    plain = VocabCTCAdapter(4)
    torch.testing.assert_close(ad.logits(x, table), plain.logits(x, table))  # zero vectors at the start
    with torch.no_grad():
        ad.spelling.weight.normal_()
    rows = ad.score_table(table) - table
    for v, bag in enumerate(bag_sets(index, offsets)):
        expected = ad.spelling.weight[bag].sum(0) / len(bag) ** 0.5
        torch.testing.assert_close(rows[v], expected)
    # the backbone still reads the plain embeddings: only the scores change
    post = ad.logits(x, table).softmax(-1)
    torch.testing.assert_close(ad(x, table), ad.mix(post, table))
    torch.testing.assert_close(ad.mix(post, table), post[:, :-1] @ table + post[:, -1:] * ad.blank_embed)
    half = ad.to(torch.bfloat16)  # the bags stay integers; the weights follow the table's dtype
    assert half.spelling_index.dtype == torch.long
    torch.testing.assert_close(half.logits(x.bfloat16(), table.bfloat16()).float(), ad.float().logits(x, table),
                               atol=0.1, rtol=0.05)
    ad.float()
    with pytest.raises(ValueError, match="do not fit"):
        ad.set_spelling(tokens[:2])
    with pytest.raises(ValueError, match="no spelling table"):
        plain.set_spelling(tokens)


def spelled_model(tmp_path, buckets=64):
    from funaudiochat.modeling.build import assemble_from_parts
    from funaudiochat.testing import save_tiny_backbone

    save_tiny_backbone(tmp_path / "llm")
    srh = tiny_config().audio_config.crq_transformer_config
    torch.manual_seed(0)
    return assemble_from_parts(tmp_path / "llm", srh_config=srh, continuous_adapter="vocab_ctc",
                               ctc_spelling_buckets=buckets)


def test_assembly_fills_the_spelling_bags_from_the_tokenizer_and_they_train(tmp_path):
    from funaudiochat.modeling.build import token_spellings

    model, tok = spelled_model(tmp_path)
    audio = model.config.audio_config
    spellings = token_spellings(tok, audio.ctc_vocab_size)
    index, offsets = spelling_bags(spellings, 64)
    assert audio.ctc_spelling_buckets == 64 and audio.ctc_spelling_grams == index.numel()
    assert torch.equal(model.speech_vocab_adapter.spelling_index, index)
    assert torch.equal(model.speech_vocab_adapter.spelling_offsets, offsets)
    batch = synthetic_batch(model.config, batch_size=2)
    logits, lens = model.speech_ctc_logits(batch["input_features"], batch["feature_attention_mask"])
    assert logits.shape[-1] == audio.ctc_vocab_size + 1
    logits.logsumexp(-1).sum().backward()
    assert model.speech_vocab_adapter.spelling.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs continuous_adapter='vocab_ctc'"):
        from funaudiochat.modeling.build import assemble_from_parts
        assemble_from_parts(tmp_path / "llm", srh_config=tiny_config().audio_config.crq_transformer_config,
                            ctc_spelling_buckets=64)


def test_assembly_takes_ready_made_bags_and_checks_their_size(tmp_path):
    from funaudiochat.modeling.build import assemble_from_parts

    computed, _ = spelled_model(tmp_path)
    index, offsets = computed.speech_vocab_adapter.spelling_index, computed.speech_vocab_adapter.spelling_offsets
    srh = tiny_config().audio_config.crq_transformer_config
    # bags unlike the tokenizer's (shifted by one bucket): they are used as given, not recomputed
    given = ((index + 1) % 64, offsets.clone())
    torch.manual_seed(0)
    model, _ = assemble_from_parts(tmp_path / "llm", srh_config=srh, continuous_adapter="vocab_ctc",
                                   ctc_spelling_buckets=64, ctc_spelling_bags=given)
    assert torch.equal(model.speech_vocab_adapter.spelling_index, given[0])
    assert torch.equal(model.speech_vocab_adapter.spelling_offsets, offsets)
    assert model.config.audio_config.ctc_spelling_grams == index.numel()
    with pytest.raises(ValueError, match=f"spell {offsets.numel() - 1} tokens; the CTC vocabulary has {offsets.numel()}"):
        assemble_from_parts(tmp_path / "llm", srh_config=srh, continuous_adapter="vocab_ctc",
                            ctc_spelling_buckets=64, ctc_spelling_bags=(index, offsets[:-1]))
    with pytest.raises(ValueError, match="ctc_spelling_bags needs ctc_spelling_buckets > 0"):
        assemble_from_parts(tmp_path / "llm", srh_config=srh, continuous_adapter="vocab_ctc",
                            ctc_spelling_bags=(index, offsets))


def test_a_spelling_table_survives_save_and_reload(tmp_path):
    model, _ = spelled_model(tmp_path)
    model.eval()
    with torch.no_grad():
        model.speech_vocab_adapter.spelling.weight.normal_()
    model.save_pretrained(tmp_path / "saved")
    again = FunAudioChatForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    ad, ad2 = model.speech_vocab_adapter, again.speech_vocab_adapter
    assert torch.equal(ad2.spelling_index, ad.spelling_index) and torch.equal(ad2.spelling_offsets, ad.spelling_offsets)
    torch.testing.assert_close(ad2.spelling.weight, ad.spelling.weight)
    batch = synthetic_batch(model.config, batch_size=2)
    with torch.no_grad():
        a = model.speech_ctc_logits(batch["input_features"], batch["feature_attention_mask"])[0]
        b = again.speech_ctc_logits(batch["input_features"], batch["feature_attention_mask"])[0]
    torch.testing.assert_close(b, a)


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
