"""Conversation encoding: exact token layout, labels and audio items."""

import numpy as np
import pytest
import torch

from funaudiochat.config import tiny_config
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.processing import FunAudioChatProcessor, Message
from funaudiochat.testing import word_tokenizer

CFG = tiny_config()
TOK = word_tokenizer(vocab_size=512)
PROC = FunAudioChatProcessor(TOK, CFG)


def t(text):
    return TOK(text, add_special_tokens=False).input_ids


def test_spoken_turn_layout_and_labels():
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1  # 1 s -> 25 frames
    msgs = [Message("user", audio=audio), Message("assistant", "paris", speech_tokens=list(range(12)))]
    ex = PROC.encode(msgs)
    A, B, E = CFG.audio_token_index, CFG.audio_bos_id, CFG.audio_eos_id
    im_s, im_e = TOK.convert_tokens_to_ids("<|im_start|>"), TOK.convert_tokens_to_ids("<|im_end|>")
    user = [im_s, *t("user\n"), B, *[A] * 5, E, im_e, *t("\n")]
    reply = [B, *[A] * 5, E, im_e]  # 10 delay + 12 tokens = 22 -> 5 groups
    assert ex.input_ids == user + [im_s, *t("assistant\n")] + reply + t("\n")
    assert ex.labels == [-100] * (len(user) + 1 + len(t("assistant\n"))) + reply + [-100]
    assert ex.audio[0].speech_ids == [CFG.audio_config.pad_token_id] * 25
    assert ex.audio[0].features.shape == (80, 100)
    # 10 delay tokens + 12 speech tokens, the last group completed with speech EOS
    assert ex.audio[1].speech_ids == [6561] * 10 + list(range(12)) + [6562] * 3
    assert ex.audio[1].text_ids == t("paris")


def test_generation_prompt_ends_with_audio_bos_when_speaking():
    ex = PROC.encode([Message("user", "hello")], add_generation_prompt=True, speak=True)
    assert ex.input_ids[-1] == CFG.audio_bos_id
    assert ex.input_ids[-1 - len(t("assistant\n")) - 1] == TOK.convert_tokens_to_ids("<|im_start|>")
    assert set(ex.labels) == {-100}


def test_collated_batch_runs_through_the_model():
    rng = np.random.default_rng(1)
    a = [Message("user", audio=rng.standard_normal(24000).astype(np.float32) * 0.1), Message("assistant", "two", speech_tokens=[5] * 20)]
    b = [Message("system", "hello"), Message("user", "what is two plus two ?"), Message("assistant", "four")]
    batch = PROC.collate([PROC.encode(a), PROC.encode(b)])
    assert batch["feature_exist_mask"].tolist() == [True, False]
    assert batch["input_features"].shape == (1, 80, 150)
    torch.manual_seed(0)
    out = FunAudioChatForConditionalGeneration(CFG)(**batch)
    assert torch.isfinite(out.loss) and out.speech_loss is not None


def test_bad_messages_are_reported():
    with pytest.raises(ValueError, match="unknown role 'narrator'"):
        Message("narrator", "hi")
    with pytest.raises(ValueError, match="needs text, audio or speech_tokens"):
        Message("user")
    with pytest.raises(ValueError, match=r"speech tokens must be in \[0, 6561\)"):
        PROC.encode([Message("assistant", "hi", speech_tokens=[1, 7000])])
    with pytest.raises(ValueError, match="shorter than one 40 ms speech frame"):
        PROC.encode([Message("user", audio=np.zeros(100, dtype=np.float32))])


PACED = FunAudioChatProcessor(TOK, tiny_config(text_layout="paced"))


def test_paced_reply_puts_each_word_before_its_speech():
    # 40 speech frames + 10 delay = 50 ids -> 10 groups; "the capital is paris" starts at 0, 6, 22, 30
    msg = Message("assistant", "the capital is paris", speech_tokens=list(range(40)), word_starts=[0, 6, 22, 30])
    slot = PACED.encode([msg]).audio[0]
    sil = CFG.sil_id
    # word at frame f -> group f // 5 + 1 (delay 2 groups, one before the sound); "the" and "capital"
    # both want slot 1 or 2: "the" moves earlier
    assert slot.text_ids == [sil, *t("the"), *t("capital"), sil, sil, *t("is"), sil, *t("paris"), sil, sil]
    # the released layout ignores word_starts
    assert PROC.encode([msg]).audio[0].text_ids == t("the capital is paris")


def test_paced_reply_needs_word_starts_and_falls_back_when_crowded(caplog):
    with pytest.raises(ValueError, match="paced text layout: a spoken reply with text needs word_starts"):
        PACED.encode([Message("assistant", "paris", speech_tokens=[1] * 10)])
    # 2 frames + 10 delay -> 3 groups for 4 words: the packed layout, truncated, with a warning
    msg = Message("assistant", "the capital is paris", speech_tokens=[1, 2], word_starts=[0, 0, 1, 1])
    assert PACED.encode([msg]).audio[0].text_ids == t("the capital is")
    assert "do not fit in 3 speech groups" in caplog.text


def test_paced_batch_trains_with_the_paced_slots_as_text_targets():
    from funaudiochat.modeling.targets import aligned_text_slots

    msgs = [Message("user", "hello"), Message("assistant", "the capital is paris", speech_tokens=list(range(40)),
                                              word_starts=[0, 6, 22, 30])]
    ex = PACED.encode(msgs)
    batch = PACED.collate([ex])
    # the model's slot alignment keeps the paced ids (<|sil|> is not a text end) ...
    slots = aligned_text_slots(batch["text_ids"][0], batch["text_attention_mask"][0], 10, CFG.sil_id, (2, 0))
    assert slots.tolist() == ex.audio[0].text_ids
    torch.manual_seed(0)
    out = FunAudioChatForConditionalGeneration(PACED.config)(**batch)
    # ... and trains on them: text and speech losses both exist
    assert torch.isfinite(out.loss) and out.text_loss is not None and out.speech_loss is not None
