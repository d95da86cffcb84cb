from __future__ import annotations

import json

import pytest

from funaudiochat.speech.jsonl_log import JsonlAppender, load_log


def test_append_then_load(tmp_path) -> None:
    path = tmp_path / "log.jsonl"
    with JsonlAppender(path) as log:
        log.append({"a": 1})
        log.append({"b": "\u00e9"})
    assert load_log(path) == [{"a": 1}, {"b": "\u00e9"}]
    assert load_log(tmp_path / "missing.jsonl") == []


def test_torn_last_line_is_dropped_and_file_repaired(tmp_path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n{"c": 3, "d"', encoding="utf-8")
    assert load_log(path) == [{"a": 1}, {"b": 2}]
    assert path.read_text(encoding="utf-8") == '{"a": 1}\n{"b": 2}\n'
    with JsonlAppender(path) as log:
        log.append({"e": 5})
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"a": 1}, {"b": 2}, {"e": 5}]


def test_complete_last_line_without_newline_is_kept(tmp_path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}', encoding="utf-8")
    assert load_log(path) == [{"a": 1}, {"b": 2}]
    with JsonlAppender(path) as log:
        log.append({"c": 3})
    assert load_log(path) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_corrupt_middle_line_is_an_error_with_line_number(tmp_path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"log\.jsonl:2: corrupt log line"):
        load_log(path)
