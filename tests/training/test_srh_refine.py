"""SRH refinement on cached backbone states: the cache reproduces the model's own speech loss, and
training moves the head alone."""

import json

import pytest
import torch

from funaudiochat.config import tiny_config
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.testing import synthetic_batch
from funaudiochat.training.srh_refine import cache_rows, evaluate_srh, reinitialise_head, srh_rows, train_srh


def _model(seed=0):
    torch.manual_seed(seed)
    return FunAudioChatForConditionalGeneration(tiny_config()).eval()


def test_cached_rows_give_the_forward_speech_loss_exactly():
    model = _model()
    batch = synthetic_batch(model.config, batch_size=3, seed=1)
    with torch.no_grad():
        want = model(**batch).speech_loss
    rows = srh_rows(model, batch, context_groups=10**6)  # whole sequence: the forward's own context
    assert len(rows) == 3
    got = evaluate_srh(model, rows, batch_size=3)["loss"]
    assert got == pytest.approx(float(want), rel=2e-3)  # fp16 storage of the conditions


def test_rows_keep_the_spoken_span_and_the_asked_context():
    model = _model()
    batch = synthetic_batch(model.config, batch_size=2, seed=2)
    k, ignore = model.group_size, model.config.ignore_index
    full = srh_rows(model, batch, context_groups=10**6)
    short = srh_rows(model, batch, context_groups=1)
    for f, s in zip(full, short):
        spoken = torch.nonzero(f.targets != ignore).flatten()
        first_group = int(spoken[0]) // k
        assert s.conditions.shape[0] == f.conditions.shape[0] - (first_group - 1)
        assert s.prev.shape[0] == s.targets.shape[0] == k * s.conditions.shape[0]
        assert torch.equal(s.targets, f.targets[k * (first_group - 1):])  # every target is kept
        assert torch.equal(s.conditions, f.conditions[first_group - 1:])


def test_training_lowers_the_loss_and_touches_only_the_head(tmp_path):
    model = _model()
    rows = cache_rows(model, [synthetic_batch(model.config, batch_size=2, seed=s) for s in range(3)])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    start = evaluate_srh(model, rows)["loss"]
    log = train_srh(model, rows, steps=30, batch_size=4, lr_max=1e-2, lr_min=1e-3, warmup_steps=3,
                    val_rows=rows[:2], eval_every=10, metrics_path=tmp_path / "m.jsonl")
    assert evaluate_srh(model, rows)["loss"] < 0.9 * start  # random speech tokens: memorised, slowly
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("audio_invert_tower.") for n in changed)
    # the speech table is tied to the head's output layer and feeds the backbone: it must not move
    assert model.audio_invert_tower.lm_head.weight is model.audio_tower.embed_tokens.weight
    assert "audio_tower.embed_tokens.weight" not in changed
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 31)) == [x["step"] for x in log]
    assert {x["step"] for x in lines if "val_loss" in x} == {10, 20, 30}


def test_nothing_to_train_is_an_error():
    with pytest.raises(ValueError, match="no SRH rows"):
        train_srh(_model(), [], steps=1)


def test_a_reinitialised_head_keeps_the_shared_table_and_nothing_else_of_its_own():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.audio_invert_tower.parameters():
            p.add_(0.5)  # a trained head, and a trained shared speech table
    table = model.audio_tower.embed_tokens.weight.detach().clone()
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    reinitialise_head(model, seed=7)
    head = {n: p for n, p in model.named_parameters() if n.startswith("audio_invert_tower.")}
    assert torch.equal(model.audio_tower.embed_tokens.weight, table)  # kept: it also embeds the speech input
    assert model.audio_invert_tower.lm_head.weight is model.audio_tower.embed_tokens.weight
    assert all(not torch.equal(p, before[n] + 0.5) for n, p in head.items())  # every own weight drawn anew
    other = _model(seed=3)
    reinitialise_head(other, seed=7)
    for n, p in head.items():  # the draw depends on the seed only
        assert torch.equal(p, dict(other.named_parameters())[n]), n
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters() if n not in head)  # the rest stays


def test_grouped_batches_hold_rows_of_similar_length(monkeypatch):
    from funaudiochat.training import srh_refine

    model = _model()
    k, hidden = model.group_size, model.config.text_config.hidden_size
    lengths = torch.randperm(24, generator=torch.Generator().manual_seed(3)).add(1).tolist()
    rows = [srh_refine.SRHRow(torch.zeros(n, hidden, dtype=torch.float16), torch.zeros(k * n, dtype=torch.long),
                              torch.zeros(k * n, dtype=torch.long)) for n in lengths]
    seen: list[list[int]] = []

    def spy(model, batch):
        seen.append([r.conditions.shape[0] for r in batch])
        return next(model.audio_invert_tower.parameters()).sum() * 0.0, 0, 0

    monkeypatch.setattr(srh_refine, "_loss", spy)
    train_srh(model, rows, steps=6, batch_size=4, group_by_length=3)  # one pass: 2 windows of 3 batches
    assert sorted(n for b in seen for n in b) == list(range(1, 25))
    first, second = seen[:3], seen[3:]
    assert all(min(a) >= max(b) for a, b in zip(first, first[1:]))  # longest first
    assert all(max(a) <= min(b) for a, b in zip(second, second[1:]))  # then shortest first
    grouped_padding = sum(4 * max(b) for b in seen)
    seen.clear()
    train_srh(model, rows, steps=6, batch_size=4)  # random batches, as before
    assert sorted(n for b in seen for n in b) == list(range(1, 25))
    assert grouped_padding < sum(4 * max(b) for b in seen)
