"""Loading benchdata-style JSONL sets and deciding how each is scored.

The task type is inferred from the fields of the records (see `infer_task`), so a new set in one
of the known formats is scored without code changes.  `KNOWN_SETS` only adds human-facing
metadata (metric name, language, what the paper reports) for the sets shipped in
``shared/benchdata``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "TaskType",
    "SetInfo",
    "KNOWN_SETS",
    "load_jsonl_set",
    "infer_task",
    "infer_set_task",
    "describe_set",
    "discover_sets",
]


class TaskType(str, Enum):
    SHORT_QA = "short_qa"
    MULTIPLE_CHOICE = "multiple_choice"
    OPEN = "open"
    IFEVAL = "ifeval"
    REFUSAL = "refusal"
    ASR = "asr"
    BFCL = "bfcl"
    ACEBENCH = "acebench"
    SPEECHFC = "speechfc"


@dataclass(frozen=True)
class SetInfo:
    """What a set is and how it is scored."""

    name: str
    task: TaskType
    metric: str
    language: str = "en"
    note: str = ""


_METRIC = {
    TaskType.SHORT_QA: "accuracy (reference contained in response)",
    TaskType.MULTIPLE_CHOICE: "accuracy (extracted letter)",
    TaskType.OPEN: "LLM-judge score (not computed here)",
    TaskType.IFEVAL: "prompt/instruction accuracy, strict and loose",
    TaskType.REFUSAL: "refusal rate",
    TaskType.ASR: "WER (corpus level)",
    TaskType.BFCL: "AST accuracy",
    TaskType.ACEBENCH: "accuracy (any candidate answer)",
    TaskType.SPEECHFC: "AST accuracy",
}


def _info(name: str, task: TaskType, language: str = "en", note: str = "") -> SetInfo:
    return SetInfo(name, task, _METRIC[task], language, note)


KNOWN_SETS: Mapping[str, SetInfo] = MappingProxyType({
    "llama_questions": _info("llama_questions", TaskType.SHORT_QA,
                             note="same items as the paper's Llama Q."),
    "web_questions": _info("web_questions", TaskType.SHORT_QA),
    "triviaqa": _info("triviaqa", TaskType.SHORT_QA,
                      note="different subsample from OpenAudioBench's"),
    "alpaca_eval": _info("alpaca_eval", TaskType.OPEN),
    "ifeval": _info("ifeval", TaskType.IFEVAL),
    "advbench": _info("advbench", TaskType.REFUSAL),
    "openbookqa": _info("openbookqa", TaskType.MULTIPLE_CHOICE),
    "mmlu_pro_mmsu_domains": _info("mmlu_pro_mmsu_domains", TaskType.MULTIPLE_CHOICE,
                                   note="up to 10 options; VoiceBench mmsu uses 4"),
    "librispeech_test_clean": _info("librispeech_test_clean", TaskType.ASR),
    "librispeech_test_other": _info("librispeech_test_other", TaskType.ASR),
    "speechfc_bfcl_single": _info("speechfc_bfcl_single", TaskType.SPEECHFC,
                                  note="paper: 92.73% on the full 578 items"),
    "bfcl": _info("bfcl", TaskType.BFCL),
    "acebench_zh": _info("acebench_zh", TaskType.ACEBENCH, language="zh"),
    "acebench_en": _info("acebench_en", TaskType.ACEBENCH),
})


def load_jsonl_set(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read one JSON object per non-blank line.

    Raises FileNotFoundError for a missing file and ValueError naming file and line for a line
    that is not valid JSON, is not an object, or lacks an ``id``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark set not found: {path}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if limit is not None and len(records) >= limit:
                break
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column "
                                 f"{exc.colno})") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got "
                                 f"{type(obj).__name__}")
            if "id" not in obj:
                raise ValueError(f"{path}:{lineno}: record has no 'id' field")
            records.append(obj)
    logger.debug("loaded %d records from %s", len(records), path)
    return records


def _is_openai_tools(tools: Any) -> bool:
    return isinstance(tools, list) and bool(tools) and all(
        isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
        for t in tools)


def infer_task(record: Mapping[str, Any]) -> TaskType:
    """Decide the task type from which fields a record carries.

    Order matters: the most specific signatures are tested first.  Raises ValueError when no
    known format matches.
    """
    if "instruction_id_list" in record and "kwargs" in record:
        return TaskType.IFEVAL
    if "ground_truth" in record and "tools" in record:
        if "acebench_category" in record or isinstance(record["ground_truth"], dict) or (
                isinstance(record["ground_truth"], list) and "bfcl_category" not in record
                and "language" in record):
            return TaskType.ACEBENCH
        if _is_openai_tools(record["tools"]):
            return TaskType.SPEECHFC
        return TaskType.BFCL
    if record.get("expected_behavior") == "no_call" and "tools" in record:
        return TaskType.BFCL
    if record.get("expected_behavior") == "refuse":
        return TaskType.REFUSAL
    if "choices" in record and ("answer" in record or "answer_index" in record):
        return TaskType.MULTIPLE_CHOICE
    if "answers" in record:
        return TaskType.SHORT_QA
    if "reference" in record and "question" not in record:
        return TaskType.ASR
    if "question" in record:
        return TaskType.OPEN
    raise ValueError(f"record {record.get('id')!r}: cannot infer task type from fields "
                     f"{sorted(record)}")


def infer_set_task(records: list[Mapping[str, Any]], name: str = "<set>") -> TaskType:
    """Task type of a whole set; every record must agree (ValueError otherwise)."""
    if not records:
        raise ValueError(f"{name}: empty set, cannot infer task type")
    tasks = {infer_task(r) for r in records}
    if len(tasks) != 1:
        kinds = sorted(t.value for t in tasks)
        raise ValueError(f"{name}: records imply several task types {kinds}")
    return tasks.pop()


def describe_set(path: str | Path, name: str | None = None, sample: int = 50) -> SetInfo:
    """SetInfo for a JSONL file: known metadata if the name is known, else inferred.

    The name defaults to the parent directory (``<name>/dev.jsonl`` layout).
    """
    path = Path(path)
    name = name or path.parent.name
    records = load_jsonl_set(path, limit=sample)
    task = infer_set_task(records, str(path))
    known = KNOWN_SETS.get(name)
    if known is not None:
        if known.task != task:
            raise ValueError(f"{path}: records look like {task.value}, but set {name!r} is "
                             f"registered as {known.task.value}")
        return known
    language = str(records[0].get("language", "en"))
    return _info(name, task, language=language)


def discover_sets(root: str | Path, split: str = "dev") -> dict[str, tuple[Path, SetInfo]]:
    """Find every ``<root>/<name>/<split>.jsonl`` and describe it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark root not found: {root}")
    found: dict[str, tuple[Path, SetInfo]] = {}
    for path in sorted(root.glob(f"*/{split}.jsonl")):
        found[path.parent.name] = (path, describe_set(path))
    return found
