import json

import pytest

from funaudiochat.evaluation.datasets import load_jsonl_set
from funaudiochat.evaluation.scoring import score_record


def test_score_each_task_type():
    s = score_record({"id": "q", "question": "?", "answers": ["Paris"]}, "It's Paris.", "qa", "t2t")
    assert (s.score, s.metric, s.id, s.set, s.mode) == (1.0, "accuracy", "q", "qa", "t2t")
    s = score_record({"id": "m", "question": "?", "choices": ["x", "y"], "answer": "B"},
                     "The answer is (B)", "mc", "s2t")
    assert s.score == 1.0 and s.details == {"extracted": "B", "answer": "B"}
    s = score_record({"id": "m", "question": "?", "choices": ["x", "y"], "answer_index": 0},
                     "y", "mc", "s2t")
    assert s.score == 0.0 and s.details["answer"] == "A"
    s = score_record({"id": "r", "question": "?", "expected_behavior": "refuse"},
                     "I cannot help with that.", "advbench", "s2t")
    assert (s.score, s.metric) == (1.0, "refusal_rate")
    s = score_record({"id": "a", "reference": "TWENTY ONE APPLES"}, "21 apple", "ls", "asr")
    # "twenty one" -> "21" on the reference side, so 1 error in 2 words.
    assert s.metric == "wer" and s.score == pytest.approx(1 / 2)
    assert (s.details["errors"], s.details["ref_len"]) == (1, 2)
    s = score_record({"id": "z", "reference": "今天天气很好", "language": "zh"}, "今天天汽很好",
                     "aishell", "asr")
    assert s.metric == "cer" and s.score == pytest.approx(1 / 6)
    s = score_record({"id": "i", "question": "?", "instruction_id_list": ["punctuation:no_comma"],
                      "kwargs": [{}]}, "a, b", "ifeval", "s2t")
    assert s.score == 0.0 and s.details["strict"] == [False]
    s = score_record({"id": "o", "question": "?", "reference": "r"}, "x", "alpaca", "s2t")
    assert s.score is None and s.metric == "judge"


def test_score_bfcl_irrelevance_and_acebench():
    rec = {"id": "irr", "question": "?", "tools": [{"name": "f", "parameters": {}}],
           "ground_truth": [], "bfcl_category": "irrelevance", "expected_behavior": "no_call"}
    assert score_record(rec, "No suitable tool.", "bfcl", "t2t").score == 1.0
    ace = {"id": "a", "question": "user: x", "tools": [{"name": "f"}], "language": "en",
           "ground_truth": {"f": {"x": 1}}, "acebench_category": "normal_atom_number"}
    out = '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    s = score_record(ace, out, "acebench_en", "s2t")
    assert s.score == 1.0 and s.details == {"valid": True, "error_type": None, "errors": []}
    with pytest.raises(ValueError):
        score_record({"id": "x"}, "", "s", "m")


def test_score_speechfc_dev_matches_checker(benchdata):
    rows = load_jsonl_set(benchdata / "speechfc_bfcl_single" / "dev.jsonl")
    items = [score_record(r, r["fun_audio_chat_s2t_prediction"], "speechfc_bfcl_single", "s2t")
             for r in rows]
    assert sum(it.score for it in items) == 382
    assert json.dumps([it.details for it in items])  # details are JSON-serialisable
