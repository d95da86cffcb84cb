import json

import pytest

from funaudiochat.evaluation.datasets import (
    KNOWN_SETS, TaskType, describe_set, discover_sets, infer_set_task, infer_task, load_jsonl_set)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_limit_and_blank_lines(tmp_path):
    p = _write(tmp_path / "s.jsonl", [json.dumps({"id": i, "question": "q", "answers": ["a"]})
                                      for i in range(5)] + [""])
    assert [r["id"] for r in load_jsonl_set(p)] == [0, 1, 2, 3, 4]
    assert len(load_jsonl_set(p, limit=2)) == 2
    assert load_jsonl_set(p, limit=0) == []


def test_load_jsonl_errors_name_file_and_line(tmp_path):
    p = _write(tmp_path / "bad.jsonl", ['{"id": 1}', '', '{"id": 2,,}'])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON"):
        load_jsonl_set(p)
    p = _write(tmp_path / "arr.jsonl", ['[1, 2]'])
    with pytest.raises(ValueError, match=r"arr\.jsonl:1: expected a JSON object, got list"):
        load_jsonl_set(p)
    p = _write(tmp_path / "noid.jsonl", ['{"question": "x"}'])
    with pytest.raises(ValueError, match=r"noid\.jsonl:1: record has no 'id'"):
        load_jsonl_set(p)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_jsonl_set(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("record,task", [
    ({"id": 1, "question": "q", "answers": ["a"]}, TaskType.SHORT_QA),
    ({"id": 1, "question": "q", "choices": ["x", "y"], "answer": "A"}, TaskType.MULTIPLE_CHOICE),
    ({"id": 1, "question": "q", "reference": "r", "subset": "s"}, TaskType.OPEN),
    ({"id": 1, "question": "q", "instruction_id_list": [], "kwargs": []}, TaskType.IFEVAL),
    ({"id": 1, "question": "q", "expected_behavior": "refuse"}, TaskType.REFUSAL),
    ({"id": 1, "reference": "HELLO", "audio_file": "a.flac"}, TaskType.ASR),
    ({"id": 1, "question": "q", "tools": [{"name": "f"}], "ground_truth": [],
      "bfcl_category": "irrelevance", "expected_behavior": "no_call"}, TaskType.BFCL),
    ({"id": 1, "question": "q", "tools": [{"type": "function", "function": {"name": "f"}}],
      "ground_truth": [{"f": {}}]}, TaskType.SPEECHFC),
    ({"id": 1, "question": "q", "tools": [{"name": "f"}], "ground_truth": {"f": {}}},
     TaskType.ACEBENCH),
    ({"id": 1, "question": "q", "tools": [{"name": "f"}], "ground_truth": [{"f": {}}],
      "language": "zh"}, TaskType.ACEBENCH),
])
def test_infer_task_from_fields(record, task):
    assert infer_task(record) is task


def test_infer_task_errors():
    with pytest.raises(ValueError, match="cannot infer task type"):
        infer_task({"id": 7, "foo": 1})
    with pytest.raises(ValueError, match="several task types"):
        infer_set_task([{"id": 1, "question": "q", "answers": []},
                        {"id": 2, "question": "q"}], "mixed")
    with pytest.raises(ValueError, match="empty set"):
        infer_set_task([], "x")


def test_new_set_in_known_format_needs_no_code(tmp_path):
    d = tmp_path / "my_new_qa"
    d.mkdir()
    _write(d / "dev.jsonl", [json.dumps({"id": "n1", "question": "q", "answers": ["a"]})])
    info = describe_set(d / "dev.jsonl")
    assert (info.name, info.task) == ("my_new_qa", TaskType.SHORT_QA)
    assert discover_sets(tmp_path)["my_new_qa"][1].task is TaskType.SHORT_QA


def test_known_name_with_wrong_format_is_rejected(tmp_path):
    d = tmp_path / "advbench"
    d.mkdir()
    _write(d / "dev.jsonl", [json.dumps({"id": "n1", "question": "q", "answers": ["a"]})])
    with pytest.raises(ValueError, match="registered as refusal"):
        describe_set(d / "dev.jsonl")


def test_all_shared_sets_match_registry(benchdata):
    found = discover_sets(benchdata)
    assert set(found) == set(KNOWN_SETS)
    for name, (_, info) in found.items():
        assert info.task is KNOWN_SETS[name].task
