"""JSONL conversation format: every bad line is reported with its line number and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from funaudiochat.training.data import DPO_TASKS, DataFormatError, Message, load_jsonl, validate_jsonl


def rec(**kw) -> str:
    return json.dumps(kw)


U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    (tmp_path / "wav").mkdir()
    (tmp_path / "wav" / "q.wav").write_bytes(b"RIFF")
    lines = [
        rec(
            id="a1",
            task="empathy",
            messages=[
                {"role": "system", "content": "Be kind."},
                {"role": "user", "audio": "wav/q.wav"},
                {"role": "assistant", "content": "Sure.", "speech_tokens": [0, 6560, 17]},
            ],
        ),
        rec(
            task="robustness",
            messages=[{"role": "user", "content": "q", "audio": "wav/q.wav"}],
            chosen={"role": "assistant", "content": "good"},
            rejected={"role": "assistant", "content": "bad", "speech_tokens": [1, 2]},
        ),
    ]
    path = tmp_path / "good.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_good_file(good_file: Path) -> None:
    records, errors = validate_jsonl(good_file)
    assert errors == []
    sft, dpo = records
    assert not sft.is_preference and dpo.is_preference
    assert sft.line == 1 and dpo.line == 2
    assert sft.id == "a1" and sft.task == "empathy"
    assert sft.messages[1].audio == good_file.parent / "wav" / "q.wav"
    assert sft.messages[2] == Message(role="assistant", content="Sure.", speech_tokens=(0, 6560, 17))
    assert dpo.chosen == Message(role="assistant", content="good")
    assert dpo.rejected.speech_tokens == (1, 2)
    assert load_jsonl(good_file, allowed_tasks=DPO_TASKS) == records


def test_bad_file_reports_every_line_and_field(tmp_path: Path) -> None:
    lines = [
        rec(messages=[U, A]),  # 1 ok
        '{"messages": [',  # 2 malformed
        rec(messages=[{"role": "bot", "content": "x"}, A]),  # 3 unknown role
        rec(messages=[U, {"role": "assistant"}]),  # 4 missing content
        rec(messages=[{"role": "user", "audio": "nope.wav"}, A]),  # 5 audio file missing
        rec(messages=[U, {"role": "assistant", "speech_tokens": [5, 6561, -1]}]),  # 6 out of range
        rec(messages=[]),  # 7 empty messages
        rec(messages=[A, U]),  # 8 last turn not assistant
        "",  # 9 empty line
        rec(messages=[U], chosen=A),  # 10 DPO without rejected
        rec(messages=[U, A], task="karaoke", speech=[1]),  # 11 unknown task + unknown field
        rec(messages=[U, {"role": "system", "content": "late"}, A]),  # 12 system not first
        rec(messages=[U], chosen=A, rejected={"role": "user", "content": "x"}),  # 13 rejected not assistant
        "[1, 2]",  # 14 not an object
        rec(messages=[U, {"role": "assistant", "content": "x", "speech_tokens": ["7"]}]),  # 15 non-int
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    records, errors = validate_jsonl(path, allowed_tasks=DPO_TASKS)
    assert [r.line for r in records] == [1]
    got = [str(e) for e in errors]
    assert got == [
        "line 2: json: malformed JSON: Expecting value (column 15)",
        "line 3: messages[0].role: unknown role 'bot' (expected system, user or assistant)",
        "line 4: messages[1]: missing content (needs non-empty 'content', 'audio' or 'speech_tokens')",
        f"line 5: messages[0].audio: audio file not found: {tmp_path.resolve() / 'nope.wav'}",
        "line 6: messages[1].speech_tokens[1]: token 6561 out of range [0, 6561)",
        "line 6: messages[1].speech_tokens[2]: token -1 out of range [0, 6561)",
        "line 7: messages: is empty",
        "line 8: messages[1].role: last turn must be 'assistant' for SFT, got 'user'",
        "line 9: line: empty line",
        "line 10: rejected: missing (required for a DPO record)",
        "line 11: speech: unknown field (allowed: id, task, messages, chosen, rejected, meta)",
        "line 11: task: unknown task 'karaoke' (expected one of robustness, instruction_following, audio_understanding, empathy)",
        "line 12: messages[1].role: a system turn is only allowed first",
        "line 13: rejected.role: must be 'assistant', got 'user'",
        "line 14: record: must be a JSON object, got list",
        "line 15: messages[1].speech_tokens[0]: must be an integer, got '7'",
    ]
    with pytest.raises(DataFormatError) as exc:
        validate_jsonl(path, strict=True, allowed_tasks=DPO_TASKS)
    assert len(exc.value.errors) == len(got)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: 16 error(s):\n")
    assert all(line in msg for line in got)


def test_modes_and_misc(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(rec(messages=[U], chosen=A, rejected=A) + "\n" + rec(id=7, messages=[U, A]) + "\n" + rec(id=7, messages=[U, A]) + "\n")
    _, errors = validate_jsonl(path, mode="sft")
    assert [str(e) for e in errors] == [
        "line 1: chosen: not allowed in an SFT record",
        "line 1: rejected: not allowed in an SFT record",
        "line 1: messages[0].role: last turn must be 'assistant' for SFT, got 'user'",
        "line 3: id: duplicate id '7' (first on line 2)",
    ]
    _, errors = validate_jsonl(path, mode="dpo")
    assert [str(e) for e in errors][:2] == ["line 1: rejected: is identical to chosen", "line 2: messages[1].role: the prompt of a DPO record must end with a user turn, got 'assistant'"]

    # audio existence check can be disabled (e.g. validating on a machine without the wavs)
    p2 = tmp_path / "a.jsonl"
    p2.write_text(rec(messages=[{"role": "user", "audio": "/no/such.wav"}, A]) + "\n")
    assert validate_jsonl(p2)[1] and not validate_jsonl(p2, check_audio=False)[1]

    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    assert [str(e) for e in validate_jsonl(empty)[1]] == ["line 0: file: no records (file is empty)"]
    bad_utf8 = tmp_path / "u.jsonl"
    bad_utf8.write_bytes(b'{"messages": "\xff"}\n')
    assert [str(e) for e in validate_jsonl(bad_utf8)[1]] == ["line 1: encoding: not valid UTF-8 (invalid start byte at byte 14)"]
    with pytest.raises(FileNotFoundError, match="data file not found"):
        validate_jsonl(tmp_path / "missing.jsonl")


def test_word_starts(tmp_path: Path) -> None:
    def turn(**kw):
        return rec(messages=[U, {"role": "assistant", "content": "the big dog", "speech_tokens": [1] * 20, **kw}])

    path = tmp_path / "w.jsonl"
    path.write_text(turn(word_starts=[0, 4, 12]) + "\n")
    assert load_jsonl(path)[0].messages[1].word_starts == (0, 4, 12)
    bad = [
        (turn(word_starts=[0, 4]), "has 2 entries but content has 3 words"),
        (turn(word_starts=[0, 9, 4]), "must not decrease"),
        (turn(word_starts=[0, 4, 20]), "in [0, 20)"),
        (turn(word_starts=[0, "4", 12]), "must be a list of integers"),
        (rec(messages=[U, {"role": "assistant", "content": "hi", "word_starts": [0]}]), "only a turn with both"),
    ]
    path.write_text("\n".join(line for line, _ in bad) + "\n")
    with pytest.raises(DataFormatError) as err:
        load_jsonl(path)
    for n, (_, message) in enumerate(bad, 1):
        assert f"line {n}: messages[1].word_starts: " in str(err.value) and message in str(err.value)
