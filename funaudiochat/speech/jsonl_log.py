"""Append-only JSONL logs that survive a kill: each record is flushed and fsynced as it is written.

A process killed mid-write can leave a partial last line. :func:`load_log` drops that tail
(truncating the file back to the last complete line) so that later appends stay valid JSONL;
damage anywhere else is an error, because it was not caused by an interrupted append.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["load_log", "JsonlAppender"]


def load_log(path: Path) -> list[dict[str, Any]]:
    """Read all complete records of a log; repair an interrupted final line in place."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    records: list[dict[str, Any]] = []
    good_end = 0
    lines = raw.split(b"\n")
    for lineno, line in enumerate(lines, start=1):
        is_tail = lineno == len(lines)  # text after the last newline (empty if the file ends cleanly)
        if not line.strip():
            if not is_tail:
                good_end += len(line) + 1
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if is_tail:
                logger.warning("%s:%d: dropping incomplete last line left by an interrupted run", path, lineno)
                break
            raise ValueError(f"{path}:{lineno}: corrupt log line ({exc}); delete or fix the file") from exc
        if is_tail:
            # Complete JSON but no newline: keep it and add the newline so appends stay separate.
            records.append(rec)
            with path.open("ab") as fh:
                fh.write(b"\n")
            return records
        records.append(rec)
        good_end += len(line) + 1
    if good_end < len(raw):
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    return records


class JsonlAppender:
    """Context manager that appends one JSON object per line, durably."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = None

    def __enter__(self) -> "JsonlAppender":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def append(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            raise RuntimeError(f"{self.path}: append() outside the 'with' block")
        self._fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
