"""Duplex training: record checks, the collator's step targets, duplex_forward and a tiny run."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from funaudiochat.config import tiny_config
from funaudiochat.duplex.batch import (
    DuplexCollator,
    DuplexDataset,
    DuplexRecordError,
    load_duplex_records,
    parse_record,
)
from funaudiochat.duplex.model import ACTIONS, STEP_SAMPLES, DuplexForward, duplex_forward, enable_duplex
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.processing import FunAudioChatProcessor
from funaudiochat.testing import word_tokenizer

N = -100
B, E, P = 6561, 6562, 6563  # speech BOS, EOS, pad of the tiny config


def make_model(seed: int = 0) -> FunAudioChatForConditionalGeneration:
    torch.manual_seed(seed)
    return enable_duplex(FunAudioChatForConditionalGeneration(tiny_config()))


def processor(model=None) -> FunAudioChatProcessor:
    config = model.config if model is not None else tiny_config()
    return FunAudioChatProcessor(word_tokenizer(vocab_size=512), config)


def noise(n_steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(STEP_SAMPLES * n_steps)).astype(np.float32)


def hand_record() -> dict:
    """A spoken turn (text longer than its speech), a turn cut by a barge-in, and a backchannel."""
    return {
        "id": "hand/0", "task": "duplex", "system": "you are a good help",
        "user_audio": "hand.wav", "n_steps": 14,
        "assistant": [
            # 7 tokens: ceil((10 + 7 + 1) / 5) = 4 steps (1-4); 5 text tokens -> truncated to 4
            {"start_step": 1, "text": "paris is the capital city", "speech_tokens": [100, 101, 102, 103, 104, 105, 106],
             "kind": "turn", "stop_step": None},
            # would last 5 steps (6-10) but the user barges in: silent from step 8
            {"start_step": 6, "text": "yes it is", "speech_tokens": list(range(200, 210)), "kind": "turn",
             "stop_step": 8, "dropped": ["is"]},
            # 3 tokens: ceil(14 / 5) = 3 steps (10-12)
            {"start_step": 10, "text": "yes", "speech_tokens": [7, 8, 9], "kind": "backchannel", "stop_step": None},
        ],
        "user": [{"start": 0.0, "end": 0.2, "text": "hi", "kind": "turn"}],
        "actions": ["listen", "start", "speak", "speak", "speak", "listen", "start", "speak", "stop", "listen",
                    "backchannel", "backchannel", "backchannel", "listen"],
        "events": [{"type": "interruption", "turn": 3, "user_starts": 1.5, "assistant_stops": 1.6}],
    }


def test_collator_targets_of_a_hand_made_record(caplog):
    proc = processor()
    tok = proc.tokenizer
    w = {x: tok.convert_tokens_to_ids(x) for x in ("paris", "is", "the", "capital", "yes", "it")}
    sil = proc.config.sil_id
    rec = parse_record(hand_record(), check_audio=False)
    with caplog.at_level(logging.WARNING):
        batch = DuplexCollator(proc)([(rec, noise(14))])
    assert "hand/0" in caplog.text and "truncating" in caplog.text

    listen, start, speak, stop, bc = range(5)
    assert batch["action_labels"][0].tolist() == [listen, start, speak, speak, speak, listen, start, speak, stop,
                                                  listen, bc, bc, bc, listen]
    assert batch["text_labels"][0].tolist() == [N, w["paris"], w["is"], w["the"], w["capital"], N, w["yes"], w["it"],
                                                N, N, w["yes"], sil, sil, N]
    none, bos = [N] * 5, [B] * 5
    assert batch["speech_labels"][0].tolist() == [
        none, bos, bos, [100, 101, 102, 103, 104], [105, 106, E, E, E],  # delay BOS, speech, EOS (+ EOS fill)
        none, bos, bos, none, none,  # cut at step 8: no targets from there on
        bos, bos, [7, 8, 9, E, E], none,
    ]
    # teacher forcing: step t is fed what step t - 1 emitted, <|sil|> and pads after silence
    assert batch["prev_text"][0].tolist() == [sil, sil, w["paris"], w["is"], w["the"], w["capital"], sil, w["yes"],
                                              w["it"], sil, sil, w["yes"], sil, sil]
    pad = [P] * 5
    assert batch["prev_speech"][0].tolist() == [
        pad, pad, bos, bos, [100, 101, 102, 103, 104], [105, 106, E, E, E], pad, bos, bos, pad,
        pad, bos, bos, [7, 8, 9, E, E],
    ]
    # the ChatML system prompt, then one position per step
    prompt = [proc.im_start, *proc.text("system\n"), *proc.text("you are a good help"), proc.im_end, *proc.text("\n")]
    assert batch["input_ids"][0].tolist() == prompt
    assert batch["prefix_lengths"].tolist() == [len(prompt)]
    assert batch["attention_mask"].shape == (1, len(prompt) + 14) and bool(batch["attention_mask"].all())
    assert batch["user_audio"].shape == (1, 14 * STEP_SAMPLES) and batch["n_steps"].tolist() == [14]


def test_collator_pads_a_batch():
    proc = processor()
    short = hand_record() | {"id": "short", "system": "hi", "n_steps": 6, "assistant": [],
                             "actions": ["listen"] * 6}
    recs = [parse_record(hand_record(), check_audio=False), parse_record(short, check_audio=False)]
    batch = DuplexCollator(proc)([(recs[0], noise(14)), (recs[1], noise(6))])
    assert batch["step_mask"].tolist()[1] == [1] * 6 + [0] * 8
    assert batch["action_labels"][1].tolist() == [0] * 6 + [N] * 8
    assert (batch["text_labels"][1] == N).all() and (batch["speech_labels"][1] == N).all()
    p0, p1 = batch["prefix_lengths"].tolist()
    assert batch["attention_mask"].sum(1).tolist() == [p0 + 14, p1 + 6]


def _broken(**changes) -> dict:
    rec = hand_record()
    for key, value in changes.items():
        rec[key] = value
    return rec


@pytest.mark.parametrize(
    "record, message",
    [
        (_broken(actions=["listen"] * 14), r"hand/0.*disagree.*step 1: 'listen' \(expected 'start'\)"),
        (_broken(actions=hand_record()["actions"][:-1] + ["talk"]), r"hand/0.*unknown action.*'talk'"),
        (_broken(actions=["listen"] * 13), r"hand/0.*13 entries but n_steps is 14"),
        (_broken(n_steps=12, actions=hand_record()["actions"][:12]), r"hand/0.*assistant\[2\] needs steps 10..12"),
        (_broken(system=""), r"hand/0.*'system'"),
    ],
)
def test_bad_records_are_refused_with_their_id(record, message):
    with pytest.raises(DuplexRecordError, match=message):
        DuplexCollator(processor())([(parse_record(record, check_audio=False), noise(record["n_steps"]))])


def test_bad_turns_are_refused():
    rec = hand_record()
    rec["assistant"][1]["stop_step"] = 12  # after the turn's natural end (step 10)
    with pytest.raises(DuplexRecordError, match=r"hand/0.*assistant\[1\] lasts steps 6..10 but its stop_step is 12"):
        DuplexCollator(processor())([(parse_record(rec, check_audio=False), noise(14))])
    rec = hand_record()
    rec["assistant"][2]["start_step"] = 8  # the backchannel would start on the cut turn's stop step
    with pytest.raises(DuplexRecordError, match=r"assistant\[2\] overlaps assistant\[1\] at step 8"):
        DuplexCollator(processor())([(parse_record(rec, check_audio=False), noise(14))])
    rec = hand_record()
    rec["assistant"][0]["speech_tokens"] = [100, 6561]
    with pytest.raises(DuplexRecordError, match=r"assistant\[0\]\.speech_tokens.*6561"):
        parse_record(rec, check_audio=False)


def test_wrong_audio_length_is_refused(tmp_path):
    rec = parse_record(hand_record(), check_audio=False)
    with pytest.raises(DuplexRecordError, match=r"hand/0.*44800"):
        DuplexCollator(processor())([(rec, noise(13))])
    sf.write(tmp_path / "hand.wav", noise(13), 16000)
    (tmp_path / "d.jsonl").write_text(json.dumps(hand_record()) + "\n" + json.dumps(hand_record()) + "\n{oops\n")
    with pytest.raises(DuplexRecordError) as err:
        load_duplex_records([tmp_path / "d.jsonl"])
    text = str(err.value)
    assert "3 problem(s)" in text and "d.jsonl:1" in text and "41600 samples but 14 steps need exactly 44800" in text
    assert "d.jsonl:3: malformed JSON" in text


def test_dataset_checks_every_record_up_front(tmp_path):
    sf.write(tmp_path / "hand.wav", noise(14), 16000)
    bad = hand_record() | {"id": "bad", "actions": ["listen"] * 14}
    (tmp_path / "d.jsonl").write_text(json.dumps(hand_record()) + "\n" + json.dumps(bad) + "\n")
    records = load_duplex_records([tmp_path / "d.jsonl"])
    with pytest.raises(DuplexRecordError, match=r"(?s)1 duplex record\(s\).*'bad'"):
        DuplexDataset(records, DuplexCollator(processor()))
    dataset = DuplexDataset(records[:1], DuplexCollator(processor()))
    example = dataset[0]
    assert example.id == "hand/0" and example.audio.shape == (14 * STEP_SAMPLES,)


def test_duplex_forward_losses_add_up_and_train_every_head():
    model = make_model()
    proc = processor(model)
    recs = [parse_record(hand_record(), check_audio=False),
            parse_record(hand_record() | {"id": "two", "system": "hi"}, check_audio=False)]
    batch = DuplexCollator(proc)([(recs[0], noise(14)), (recs[1], noise(14, seed=1))])
    out = duplex_forward(model, batch)
    assert out.action_logits.shape == (2, 14, len(ACTIONS))
    assert out.text_logits.shape == (2, 14, model.config.text_config.vocab_size)
    assert out.speech_logits.shape == (2, 70, model.config.audio_config.codebook_size)
    torch.testing.assert_close(out.loss, out.action_loss + out.text_loss + out.speech_loss)
    weighted = duplex_forward(model, batch, action_weight=0.5, text_weight=2.0, speech_weight=0.25)
    torch.testing.assert_close(weighted.loss, 0.5 * out.action_loss + 2.0 * out.text_loss + 0.25 * out.speech_loss)
    manual = torch.nn.functional.cross_entropy(out.action_logits.flatten(0, 1), batch["action_labels"].flatten())
    torch.testing.assert_close(out.action_loss, manual)
    assert int(out.action_steps) == 28
    out.loss.backward()
    for prefix in ("duplex_head.", "language_model.", "audio_invert_tower.", "audio_tower.output_matching",
                   "audio_tower.continual_output_matching", "continuous_audio_tower.layers"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None for g in grads), prefix


def test_duplex_forward_is_causal_and_ignores_padding():
    model = make_model().eval()
    proc = processor(model)
    rec = parse_record(hand_record(), check_audio=False)
    short = parse_record(hand_record() | {"id": "short", "system": "hi", "n_steps": 6, "assistant": [],
                                          "actions": ["listen"] * 6}, check_audio=False)
    audio = noise(14)
    later = audio.copy()
    later[STEP_SAMPLES * 7 :] = noise(7, seed=3)
    col = DuplexCollator(proc)
    with torch.no_grad():
        a = duplex_forward(model, col([(rec, audio)]))
        b = duplex_forward(model, col([(rec, later)]))
        both = duplex_forward(model, col([(rec, audio), (short, noise(6))]))
        alone = duplex_forward(model, col([(short, noise(6))]))
    # the same prompt and teacher-forced outputs: a different future changes nothing before it
    torch.testing.assert_close(a.action_logits[:, :7], b.action_logits[:, :7], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a.action_logits[:, 7:], b.action_logits[:, 7:])
    torch.testing.assert_close(both.action_logits[:1], a.action_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both.action_logits[1, :6], alone.action_logits[0], atol=1e-4, rtol=1e-4)


def test_duplex_forward_adapter_matches_function():
    model = make_model().eval()
    batch = DuplexCollator(processor(model))([(parse_record(hand_record(), check_audio=False), noise(14))])
    with torch.no_grad():
        out = DuplexForward(model, 1.0, 0.5, 2.0)(**batch)
        ref = duplex_forward(model, batch, 1.0, 0.5, 2.0)
    assert torch.equal(out.loss, ref.loss)


def test_frozen_encoder_features_are_cached_and_match():
    model = make_model().eval()
    model.continuous_audio_tower.requires_grad_(False)
    proc = processor(model)
    recs = [parse_record(hand_record(), check_audio=False),
            parse_record(hand_record() | {"id": "two", "system": "hi"}, check_audio=False)]
    batch = DuplexCollator(proc)([(recs[0], noise(14)), (recs[1], noise(14, seed=1))])
    calls = []
    model.continuous_audio_tower.register_forward_pre_hook(lambda *_: calls.append(1))
    adapter = DuplexForward(model)
    with torch.no_grad():
        ref = duplex_forward(model, batch)
        first_calls = len(calls)
        once = adapter(**batch)
        filled = len(calls)
        twice = adapter(**batch)
    assert len(adapter.feature_cache) == 2
    assert filled > first_calls and len(calls) == filled  # the second pass never ran the encoder
    torch.testing.assert_close(once.loss, ref.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(twice.action_logits, ref.action_logits, atol=1e-5, rtol=1e-5)
    # a trainable encoder is never served from the cache
    model.continuous_audio_tower.requires_grad_(True)
    before = len(calls)
    with torch.no_grad():
        adapter(**batch)
    assert len(calls) > before


# ----------------------------------------------------------------------------------- tiny run
def _write_data(folder) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i, (start, text) in enumerate([(4, "paris is the capital of france"), (3, "water boils at one hundred"),
                                       (5, "the sky is blue")]):
        n_speech = 12 + 3 * i
        length = -(-(10 + n_speech + 1) // 5)
        n_steps = start + length + 3
        actions = ["listen"] * n_steps
        actions[start] = "start"
        actions[start + 1 : start + length] = ["speak"] * (length - 1)
        wav = f"wav/r{i}.wav"
        (folder / "wav").mkdir(exist_ok=True)
        audio = 0.05 * rng.standard_normal(STEP_SAMPLES * n_steps)
        audio[: STEP_SAMPLES * start] += 0.3 * np.sin(np.arange(STEP_SAMPLES * start) * 0.05 * (i + 1))
        sf.write(folder / wav, audio.astype(np.float32), 16000)
        lines.append({
            "id": f"r{i}", "task": "duplex", "system": "you are a good help", "user_audio": wav, "n_steps": n_steps,
            "assistant": [{"start_step": start, "text": text, "kind": "turn", "stop_step": None,
                           "speech_tokens": rng.integers(0, 6561, n_speech).tolist()}],
            "user": [], "actions": actions, "events": [],
        })
    (folder / "duplex.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_tiny_duplex_training_run(tmp_path):
    from funaudiochat.training.recipes import recipe_from_dict
    from funaudiochat.training.trainer import train

    _write_data(tmp_path)
    recipe = recipe_from_dict({
        "name": "tiny_duplex", "stage": "duplex",
        "model": {"tiny": True},
        "data": {"train": [str(tmp_path / "duplex.jsonl")]},
        "train": {"max_steps": 8, "batch_size": 3, "freeze": ["continuous_audio_tower."]},
        "optim": {"lr_max": 3e-3, "lr_min": 1e-3},
        "duplex": {"action_weight": 2.0},
        "output": {"dir": str(tmp_path / "run"), "plots": False},
    })
    result = train(recipe)
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert len(rows) == 8
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert rows[-1]["action_loss"] < rows[0]["action_loss"]
    assert 0 <= rows[-1]["action_accuracy"] <= 1 and rows[0]["speech_loss"] is not None
    model = FunAudioChatForConditionalGeneration.from_pretrained(result.final_dir)  # strict
    assert model.config.duplex["actions"] == list(ACTIONS)
    assert model.duplex_head is not None


def test_shipped_duplex_recipe_runs_on_the_tiny_model(tmp_path):
    """recipes/duplex.yaml (LoRA, trainable heads, frozen encoder, gradient checkpointing) end to end."""
    from pathlib import Path

    from safetensors.torch import load_file

    from funaudiochat.training.recipes import load_recipe
    from funaudiochat.training.trainer import train

    _write_data(tmp_path)
    repo = Path(__file__).resolve().parents[2]
    recipe = load_recipe(repo / "recipes" / "duplex.yaml", [
        "model.path=null", "model.tiny=true", f"data.train=[{tmp_path / 'duplex.jsonl'}]", "data.num_workers=0",
        "train.epochs=null", "train.max_steps=2", "train.batch_size=3", "train.grad_accum=1",
        "train.mixed_precision='no'", "train.lora.r=4", f"output.dir={tmp_path / 'run'}", "output.plots=false",
    ])
    torch.manual_seed(0)
    start = FunAudioChatForConditionalGeneration(tiny_config()).state_dict()
    result = train(recipe)
    end = load_file(str(result.final_dir / "model.safetensors"))
    assert "duplex_head.weight" in end and not any("lora_" in k for k in end)
    for name in ("continuous_audio_tower.conv1.weight", "continuous_audio_tower.layers.0.fc1.weight"):
        assert torch.equal(end[name], start[name]), name  # frozen encoder
    for name in ("language_model.model.layers.0.self_attn.q_proj.weight", "audio_tower.output_matching.weight",
                 "audio_invert_tower.pre_matching.weight"):
        assert not torch.equal(end[name], start[name]), name
    assert FunAudioChatForConditionalGeneration.from_pretrained(result.final_dir).duplex_head is not None
