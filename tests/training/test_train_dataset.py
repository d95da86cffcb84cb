"""Dataset/collate over the JSONL format, bad-record reporting before training, and the DPO log-probs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from funaudiochat.config import tiny_config
from funaudiochat.processing import FunAudioChatProcessor
from funaudiochat.testing import word_tokenizer
from funaudiochat.training.dataset import ConversationDataset, DatasetError, DPOCollator, SFTCollator
from funaudiochat.training.synthetic import write_synthetic_dataset
from tests.training.tiny_runs import tiny_recipe


@pytest.fixture(scope="module")
def processor():
    return FunAudioChatProcessor(word_tokenizer(vocab_size=512), tiny_config())


@pytest.fixture(scope="module")
def model():
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration

    torch.manual_seed(0)
    return FunAudioChatForConditionalGeneration(tiny_config()).eval()


def test_sft_dataset_and_collate(tmp_path, processor):
    path = write_synthetic_dataset(tmp_path, n=4, kind="sft", seed=3)
    ds = ConversationDataset.from_files([path], processor, "sft")
    assert len(ds) == 4
    first = json.loads(path.read_text().splitlines()[0])
    ex = ds[0]
    tokens = first["messages"][1].get("speech_tokens")
    if tokens:  # the spoken reply's tokens follow the BOS delay
        ids = ex.audio[1].speech_ids[tiny_config().speech_delay :]
        assert ids[: len(tokens)] == tokens and set(ids[len(tokens):]) <= {6562}  # EOS completes the last group
    batch = SFTCollator(processor)([ds[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 4 and batch["input_features"].shape[0] == 4  # one user wav each
    assert (batch["labels"] != -100).any(dim=1).all()


def test_dpo_collate_puts_chosen_then_rejected(tmp_path, processor):
    path = write_synthetic_dataset(tmp_path, n=3, kind="dpo", seed=4)
    ds = ConversationDataset.from_files([path], processor, "dpo")
    batch = DPOCollator(processor)([ds[0], ds[1], ds[2]])
    assert batch["tasks"] == ["robustness", "instruction_following", "audio_understanding"]
    assert batch["input_ids"].shape[0] == 6
    for i in range(3):
        c, r = ds[i].chosen.input_ids, ds[i].rejected.input_ids
        assert batch["input_ids"][i, : len(c)].tolist() == c
        assert batch["input_ids"][3 + i, : len(r)].tolist() == r


def test_bad_records_are_reported_by_line_before_training(tmp_path):
    from funaudiochat.training.trainer import train

    good = write_synthetic_dataset(tmp_path, n=5, kind="sft", seed=5)
    lines = good.read_text().splitlines()
    rec3 = json.loads(lines[2])
    rec3["messages"][0]["role"] = "bot"
    rec5 = json.loads(lines[4])
    rec5["messages"][1] = {"role": "assistant", "audio": rec5["messages"][0]["audio"]}
    lines[2], lines[4] = json.dumps(rec3), json.dumps(rec5)
    lines.insert(1, "{not json")
    good.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    with pytest.raises(DatasetError) as err:
        train(tiny_recipe("pre_alignment", good, out))
    msg = str(err.value)
    assert msg.startswith("3 problem(s) in the training data:")
    assert f"{good}:2: json: malformed JSON" in msg
    assert f"{good}:4: messages[0].role: unknown role 'bot'" in msg
    assert f"{good}:6: messages[1].audio: assistant speech must be given as precomputed speech_tokens" in msg
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_text_and_speech_logprobs_match_the_forward_losses(tmp_path, processor, model):
    from funaudiochat.training.logprobs import reply_logprobs, speech_targets, text_targets

    path = write_synthetic_dataset(tmp_path, n=4, kind="sft", seed=6, spoken_fraction=0.5)
    ds = ConversationDataset.from_files([path], processor, "sft")
    batch = SFTCollator(processor)([ds[i] for i in range(4)])
    with torch.no_grad():
        out = model(**batch)
    cfg = model.config
    labels = text_targets(cfg, batch)
    assert not torch.equal(labels, batch["labels"])  # transcripts replaced the <|AUDIO|> placeholders
    ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(ce, out.text_loss, rtol=1e-6, atol=1e-6)
    targets = speech_targets(out.speech_labels, cfg.audio_config.group_size)
    ce_speech = F.cross_entropy(out.speech_logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(ce_speech, out.speech_loss, rtol=1e-6, atol=1e-6)
    text, speech, both = reply_logprobs(cfg, batch, out, text_weight=1.0, speech_weight=0.5)
    n_text = (labels[:, 1:] != -100).sum()
    torch.testing.assert_close(-text.sum() / n_text, out.text_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both, text + 0.5 * speech)
    spoken = [bool((out.speech_labels[i] != -100).any()) for i in range(4)]
    assert [bool(s != 0) for s in speech] == spoken


def test_lengths_estimate_backbone_positions_without_decoding(tmp_path, processor):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "q.wav", np.full(32000, 0.1, dtype=np.float32), 16000)  # 2 s: 10 positions at 5 Hz
    sft = {"messages": [
        {"role": "user", "audio": "q.wav", "content": "x" * 8},  # + 2
        {"role": "assistant", "content": "y" * 8, "speech_tokens": list(range(25))},  # max(2, 25 / 5)
    ]}
    dpo = {"task": "robustness", "messages": [{"role": "user", "audio": "q.wav"}],
           "chosen": {"role": "assistant", "content": "z" * 40},  # 10: the longer reply counts
           "rejected": {"role": "assistant", "content": "w" * 4}}
    typed = {"messages": [{"role": "user", "content": "x" * 8}, {"role": "assistant", "content": "y" * 40}]}  # 2 + 10
    (tmp_path / "sft.jsonl").write_text(json.dumps(sft) + "\n" + json.dumps(typed) + "\n")
    (tmp_path / "dpo.jsonl").write_text(json.dumps(dpo) + "\n")
    assert ConversationDataset.from_files([tmp_path / "sft.jsonl"], processor, "sft").lengths() == [17.0, 12.0]
    assert ConversationDataset.from_files([tmp_path / "dpo.jsonl"], processor, "dpo").lengths() == [20.0]
