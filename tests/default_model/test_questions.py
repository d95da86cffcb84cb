import logging
from pathlib import Path

import pytest

from funaudiochat.default_model.questions import (
    Question,
    benchmark_split,
    builtin_questions,
    clean_question,
    read_questions,
    split_half,
    training_questions,
    write_questions,
)

from .conftest import write_benchdata

BENCHDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "benchdata"


def test_split_half_is_sha1_parity():
    # sha1("wqs000000")[0] = 0x... ; the value is fixed forever, so the split never moves.
    import hashlib

    for item in ("wqs000000", "tqa_sm_sub_0000", "x"):
        expect = "train" if hashlib.sha1(item.encode()).digest()[0] % 2 == 0 else "eval"
        assert split_half(item) == expect
    assert [split_half(i) for i in ("wqs000000", "wqs000003", "tqa_sm_sub_0000")] == [
        split_half(i) for i in ("wqs000000", "wqs000003", "tqa_sm_sub_0000")
    ]


def test_clean_question_undoes_csv_quoting():
    assert clean_question('"From ""The Hobbit""?"') == 'From "The Hobbit"?'
    assert clean_question(' plain "quoted" text ') == 'plain "quoted" text'


def _fake_benchdata(root: Path) -> Path:
    return write_benchdata(root, {
        name: [{"id": f"{prefix}{i}", "question": f"{name} question {i}?", "answers": ["a"]} for i in range(40)]
        for name, prefix in (("web_questions", "wq"), ("triviaqa", "tq"), ("llama_questions", "lq"))})


def test_split_is_deterministic_and_disjoint(tmp_path):
    root = _fake_benchdata(tmp_path / "bench")
    train, evaluation = benchmark_split(root)
    train2, _ = benchmark_split(root)
    assert [q.id for q in train] == [q.id for q in train2]
    ids_train, ids_eval = {q.id for q in train}, {q.id for q in evaluation}
    assert not ids_train & ids_eval
    assert len(ids_train) + len(ids_eval) == 120
    assert all(q.source != "llama_questions" for q in train)
    assert {q.id for q in evaluation if q.source == "llama_questions"} == {f"lq{i}" for i in range(40)}
    assert all(split_half(q.id) == "train" for q in train)
    assert all(split_half(q.id) == "eval" for q in evaluation if q.source != "llama_questions")
    # the limited subset is a deterministic prefix
    assert [q.id for q in training_questions(root, 5)] == [q.id for q in training_questions(root)][:5]


def test_real_benchdata_split_disjoint():
    if not BENCHDATA.is_dir():
        pytest.skip(f"benchmark data not found at {BENCHDATA}")
    train, evaluation = benchmark_split(BENCHDATA)
    assert not {q.id for q in train} & {q.id for q in evaluation}
    assert not {q.text.lower() for q in train} & {q.text.lower() for q in evaluation if q.source == "llama_questions"}
    assert 1500 < len(train) < 2100


def test_missing_benchdata_falls_back_to_builtin(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        qs = training_questions(tmp_path / "absent")
    assert {q.id for q in qs} == {q.id for q in builtin_questions()}
    assert "built-in templated questions" in caplog.text
    assert Question("builtin_add_2_3", "What is 2 plus 3?", "builtin", ("5",)) in qs


def test_bad_dev_line_names_file_and_line(tmp_path):
    root = _fake_benchdata(tmp_path / "bench")
    with (root / "triviaqa" / "dev.jsonl").open("a") as f:
        f.write('{"id": "broken"}\n')
    with pytest.raises(ValueError, match=r"triviaqa/dev.jsonl:41: not a question record"):
        benchmark_split(root)


def test_questions_roundtrip(tmp_path):
    qs = builtin_questions()[:3]
    assert read_questions(write_questions(tmp_path / "q.jsonl", qs)) == qs


def test_answer_cache_skips_interrupted_line(tmp_path, caplog):
    from funaudiochat.default_model.answers import read_answer_cache

    path = tmp_path / "answers.jsonl"
    path.write_text('{"id": "a", "answer": "One."}\n\n{"id": "b", "answ')
    with caplog.at_level(logging.WARNING):
        assert read_answer_cache(path) == {"a": "One."}
    assert "answers.jsonl:3: unreadable cache line skipped" in caplog.text
    assert read_answer_cache(tmp_path / "absent.jsonl") == {}


class _LengthTokenizer:
    """Encodes a prompt as its length, and decodes a generated id as "<n> letters."."""

    padding_side = "right"
    pad_token_id = 0

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return messages[-1]["content"]

    def __call__(self, prompts, return_tensors, padding, add_special_tokens):
        import torch

        return {"input_ids": torch.tensor([[len(p)] for p in prompts])}

    def batch_decode(self, ids, skip_special_tokens):
        return [f"{int(row[0])} letters." for row in ids]


class _EchoLM:
    def __init__(self):
        self.batches = []

    def eval(self):
        return self

    def generate(self, input_ids, max_new_tokens, do_sample, pad_token_id):
        import torch

        self.batches.append(input_ids.shape[0])
        return torch.cat([input_ids, input_ids], dim=1)


def test_answers_are_batched_cached_and_shown_as_progress(tmp_path, capsys):
    from funaudiochat.default_model.answers import generate_answers

    qs = [Question(f"q{i}", "?" * (i + 1), "builtin") for i in range(5)]
    lm, tok, cache = _EchoLM(), _LengthTokenizer(), tmp_path / "answers.jsonl"
    got = generate_answers(lm, tok, qs, cache, batch_size=2)
    assert got == {f"q{i}": f"{i + 1} letters." for i in range(5)}
    assert lm.batches == [2, 2, 1] and tok.padding_side == "right"
    err = capsys.readouterr().err
    assert "answers: 100%" in err and "5/5" in err
    # A rerun reads the cache: no generation and no bar.
    assert generate_answers(lm, tok, qs, cache, batch_size=2) == got and lm.batches == [2, 2, 1]
    assert "answers" not in capsys.readouterr().err
    generate_answers(_EchoLM(), tok, qs, tmp_path / "other.jsonl", progress=False)
    assert "100%" not in capsys.readouterr().err  # no bar
