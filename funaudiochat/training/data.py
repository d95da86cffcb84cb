"""Validation of the JSONL conversation format used for SFT and DPO data (see docs/data-format.md).

One JSON object per line. Every problem is reported with its line number and field; invalid records
are left out of the returned list but never silently: each one has at least one error, and strict
mode raises with the complete list. No heavy imports here, so data can be checked without torch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
SPEECH_VOCAB_SIZE = 6561  # CosyVoice S3 tokens are 0..6560; 6561/6562 are model-side control ids
DPO_TASKS = ("robustness", "instruction_following", "audio_understanding", "empathy")
RECORD_KEYS = ("id", "task", "messages", "chosen", "rejected", "meta")
MESSAGE_KEYS = ("role", "content", "audio", "speech_tokens", "word_starts")

Mode = Literal["auto", "sft", "dpo"]


@dataclass(frozen=True)
class DataError:
    """One problem in a JSONL file: 1-based line number (0 = whole file), field path, message."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


class DataFormatError(ValueError):
    """Raised in strict mode; carries every error found in the file."""

    def __init__(self, path: Path, errors: Sequence[DataError]) -> None:
        self.path = path
        self.errors = list(errors)
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{path}: {len(self.errors)} error(s):\n{lines}")


@dataclass(frozen=True)
class Message:
    """One turn; at least one of content, audio, speech_tokens is set. ``audio`` is resolved."""

    role: str
    content: str | None = None
    audio: Path | None = None
    speech_tokens: tuple[int, ...] | None = None
    #: Start frame (25 Hz) of each whitespace-separated word of ``content`` in ``speech_tokens``.
    word_starts: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Record:
    """A validated conversation. DPO records have ``chosen``/``rejected``; ``messages`` is the prompt."""

    line: int
    messages: tuple[Message, ...]
    task: str | None = None
    id: str | None = None
    chosen: Message | None = None
    rejected: Message | None = None
    meta: dict[str, Any] | None = None

    @property
    def is_preference(self) -> bool:
        return self.chosen is not None


class _Checker:
    """Collects the errors of one line."""

    def __init__(self, line: int, audio_root: Path, check_audio: bool) -> None:
        self.line = line
        self.audio_root = audio_root
        self.check_audio = check_audio
        self.errors: list[DataError] = []

    def error(self, field: str, message: str) -> None:
        self.errors.append(DataError(self.line, field, message))

    def message(self, obj: Any, field: str) -> Message | None:
        if not isinstance(obj, dict):
            self.error(field, f"must be an object, got {type(obj).__name__}")
            return None
        n_before = len(self.errors)
        for key in obj:
            if key not in MESSAGE_KEYS:
                self.error(f"{field}.{key}", f"unknown field (allowed: {', '.join(MESSAGE_KEYS)})")
        role = obj.get("role")
        if role is None:
            self.error(f"{field}.role", "missing")
        elif role not in ROLES:
            self.error(f"{field}.role", f"unknown role {role!r} (expected system, user or assistant)")
        content = obj.get("content")
        if content is not None and not isinstance(content, str):
            self.error(f"{field}.content", f"must be a string, got {type(content).__name__}")
            content = None
        audio = self._audio(obj.get("audio"), f"{field}.audio")
        tokens = self._tokens(obj.get("speech_tokens"), f"{field}.speech_tokens")
        has_audio_field = "audio" in obj and obj["audio"] is not None
        has_token_field = "speech_tokens" in obj and obj["speech_tokens"] is not None
        if not content and not has_audio_field and not has_token_field:
            self.error(field, "missing content (needs non-empty 'content', 'audio' or 'speech_tokens')")
        if role == "system" and (has_audio_field or has_token_field):
            self.error(field, "a system turn takes text 'content' only")
        starts = self._word_starts(obj.get("word_starts"), f"{field}.word_starts", content, tokens)
        if len(self.errors) > n_before:
            return None
        return Message(role=role, content=content, audio=audio, speech_tokens=tokens, word_starts=starts)

    def _word_starts(
        self, value: Any, field: str, content: str | None, tokens: tuple[int, ...] | None
    ) -> tuple[int, ...] | None:
        if value is None:
            return None
        if tokens is None or not content:
            self.error(field, "only a turn with both 'content' and 'speech_tokens' can have word starts")
            return None
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            self.error(field, "must be a list of integers (start frame of each word)")
            return None
        n_words = len(content.split())
        if len(value) != n_words:
            self.error(field, f"has {len(value)} entries but content has {n_words} words")
            return None
        if any(v < 0 or v >= len(tokens) for v in value):
            self.error(field, f"every start must be a frame of speech_tokens, in [0, {len(tokens)})")
            return None
        if any(b < a for a, b in zip(value, value[1:])):
            self.error(field, "must not decrease")
            return None
        return tuple(value)

    def _audio(self, value: Any, field: str) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.error(field, "must be a non-empty path string")
            return None
        path = Path(value)
        if not path.is_absolute():
            path = self.audio_root / path
        if self.check_audio and not path.is_file():
            self.error(field, f"audio file not found: {path}")
        return path

    def _tokens(self, value: Any, field: str) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            self.error(field, f"must be a list of integers, got {type(value).__name__}")
            return None
        if not value:
            self.error(field, "is empty")
            return None
        ok = True
        for j, tok in enumerate(value):
            if not isinstance(tok, int) or isinstance(tok, bool):
                self.error(f"{field}[{j}]", f"must be an integer, got {tok!r}")
                ok = False
            elif not 0 <= tok < SPEECH_VOCAB_SIZE:
                self.error(f"{field}[{j}]", f"token {tok} out of range [0, {SPEECH_VOCAB_SIZE})")
                ok = False
        return tuple(value) if ok else None


def _check_record(
    obj: Any, checker: _Checker, mode: Mode, allowed_tasks: Sequence[str] | None
) -> Record | None:
    if not isinstance(obj, dict):
        checker.error("record", f"must be a JSON object, got {type(obj).__name__}")
        return None
    for key in obj:
        if key not in RECORD_KEYS:
            checker.error(key, f"unknown field (allowed: {', '.join(RECORD_KEYS)})")

    task = obj.get("task")
    if task is not None:
        if not isinstance(task, str) or not task:
            checker.error("task", f"must be a non-empty string, got {task!r}")
        elif allowed_tasks is not None and task not in allowed_tasks:
            checker.error("task", f"unknown task {task!r} (expected one of {', '.join(allowed_tasks)})")
    rec_id = obj.get("id")
    if rec_id is not None and not isinstance(rec_id, str | int):
        checker.error("id", f"must be a string or integer, got {type(rec_id).__name__}")
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        checker.error("meta", f"must be an object, got {type(meta).__name__}")

    is_dpo = mode == "dpo" or (mode == "auto" and ("chosen" in obj or "rejected" in obj))
    if not is_dpo:
        for key in ("chosen", "rejected"):
            if key in obj:
                checker.error(key, "not allowed in an SFT record")

    if "messages" not in obj:
        checker.error("messages", "missing")
        return None
    raw = obj["messages"]
    if not isinstance(raw, list):
        checker.error("messages", f"must be a list, got {type(raw).__name__}")
        return None
    if not raw:
        checker.error("messages", "is empty")
        return None
    messages = [checker.message(m, f"messages[{i}]") for i, m in enumerate(raw)]
    roles = [m.get("role") if isinstance(m, dict) else None for m in raw]
    for i, role in enumerate(roles):
        if role == "system" and i != 0:
            checker.error(f"messages[{i}].role", "a system turn is only allowed first")
    last = len(raw) - 1
    if is_dpo:
        if roles[last] != "user":
            checker.error(f"messages[{last}].role", f"the prompt of a DPO record must end with a user turn, got {roles[last]!r}")
    elif roles[last] != "assistant":
        checker.error(f"messages[{last}].role", f"last turn must be 'assistant' for SFT, got {roles[last]!r}")

    chosen = rejected = None
    if is_dpo:
        pair = []
        for key in ("chosen", "rejected"):
            if key not in obj:
                checker.error(key, "missing (required for a DPO record)")
                pair.append(None)
                continue
            msg = checker.message(obj[key], key)
            if isinstance(obj[key], dict) and obj[key].get("role") not in (None, "assistant"):
                if obj[key].get("role") in ROLES:
                    checker.error(f"{key}.role", f"must be 'assistant', got {obj[key]['role']!r}")
                msg = None
            pair.append(msg)
        chosen, rejected = pair
        if chosen is not None and rejected is not None and chosen == rejected:
            checker.error("rejected", "is identical to chosen")

    if checker.errors:
        return None
    return Record(
        line=checker.line,
        messages=tuple(m for m in messages if m is not None),
        task=task,
        id=None if rec_id is None else str(rec_id),
        chosen=chosen,
        rejected=rejected,
        meta=meta,
    )


def validate_jsonl(
    path: str | os.PathLike[str],
    mode: Mode = "auto",
    strict: bool = False,
    check_audio: bool = True,
    audio_root: str | os.PathLike[str] | None = None,
    allowed_tasks: Sequence[str] | None = None,
) -> tuple[list[Record], list[DataError]]:
    """Parse and check a conversation JSONL file.

    ``mode``: ``"sft"`` (last turn must be the assistant), ``"dpo"`` (prompt ends with a user turn,
    ``chosen``/``rejected`` required) or ``"auto"`` (DPO when a record has chosen/rejected). Relative
    audio paths are resolved against ``audio_root`` (default: the JSONL's folder). Returns the valid
    records and all errors; with ``strict`` any error raises :class:`DataFormatError`.
    """
    if mode not in ("auto", "sft", "dpo"):
        raise ValueError(f"mode must be 'auto', 'sft' or 'dpo', got {mode!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    root = Path(audio_root) if audio_root is not None else path.resolve().parent
    records: list[Record] = []
    errors: list[DataError] = []
    seen_ids: dict[str, int] = {}
    n_lines = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            n_lines = lineno
            checker = _Checker(lineno, root, check_audio)
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                checker.error("encoding", f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
                errors.extend(checker.errors)
                continue
            if not text.strip():
                checker.error("line", "empty line")
                errors.extend(checker.errors)
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                checker.error("json", f"malformed JSON: {exc.msg} (column {exc.colno})")
                errors.extend(checker.errors)
                continue
            record = _check_record(obj, checker, mode, allowed_tasks)
            if record is not None and record.id is not None:
                if record.id in seen_ids:
                    checker.error("id", f"duplicate id {record.id!r} (first on line {seen_ids[record.id]})")
                    record = None
                else:
                    seen_ids[record.id] = lineno
            errors.extend(checker.errors)
            if record is not None:
                records.append(record)
    if n_lines == 0:
        errors.append(DataError(0, "file", "no records (file is empty)"))
    if errors:
        logger.warning("%s: %d valid record(s), %d error(s)", path, len(records), len(errors))
        if strict:
            raise DataFormatError(path, errors)
    return records, errors


def load_jsonl(path: str | os.PathLike[str], mode: Mode = "auto", **kwargs: Any) -> list[Record]:
    """Strict loading: returns all records or raises :class:`DataFormatError` listing every problem."""
    records, _ = validate_jsonl(path, mode=mode, strict=True, **kwargs)
    return records
