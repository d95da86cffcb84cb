"""Score one model prediction against one benchdata record, dispatching on the task type.

This is the single entry point the model runner needs: it returns a filled ``ScoredItem``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from funaudiochat.evaluation.datasets import TaskType, infer_task
from funaudiochat.evaluation.function_calling import bfcl_mode, check_acebench, check_bfcl
from funaudiochat.evaluation.ifeval import evaluate_response
from funaudiochat.evaluation.normalize import normalize_text
from funaudiochat.evaluation.qa import extract_choice, is_refusal, short_answer_correct
from funaudiochat.evaluation.report import ScoredItem
from funaudiochat.evaluation.wer import edit_counts

logger = logging.getLogger(__name__)

__all__ = ["score_record"]


def score_record(record: Mapping[str, Any], prediction: str, set_name: str, mode: str,
                 task: TaskType | str | None = None) -> ScoredItem:
    """Score ``prediction`` (the model's text output) for ``record``.

    ``mode`` is the run's input/output mode label (e.g. "s2t", "t2t"); it is only recorded.
    ``task`` defaults to the type inferred from the record's fields.
    """
    task = TaskType(task) if task is not None else infer_task(record)
    rid = str(record.get("id"))

    def item(score: float | None, details: dict[str, Any], metric: str = "accuracy") -> ScoredItem:
        return ScoredItem(rid, set_name, mode, prediction, score, details, metric)

    if task is TaskType.SHORT_QA:
        ok = short_answer_correct(prediction, record["answers"])
        return item(float(ok), {})
    if task is TaskType.MULTIPLE_CHOICE:
        choices = record["choices"]
        answer = record.get("answer") or "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[int(record["answer_index"])]
        got = extract_choice(prediction, choices)
        return item(float(got == answer), {"extracted": got, "answer": answer})
    if task is TaskType.REFUSAL:
        return item(float(is_refusal(prediction)), {}, metric="refusal_rate")
    if task is TaskType.IFEVAL:
        res = evaluate_response(record, prediction)
        return item(float(res.prompt_strict),
                    {"instruction_ids": list(record["instruction_id_list"]),
                     "strict": list(res.strict), "loose": list(res.loose)},
                    metric="ifeval_prompt_strict")
    if task is TaskType.ASR:
        language = str(record.get("language", "en"))
        ref = normalize_text(record["reference"], language).split()
        hyp = normalize_text(prediction, language).split()
        ec = edit_counts(ref, hyp)
        metric = "cer" if language in ("zh", "ja", "yue") else "wer"
        return item(ec.rate, {"errors": ec.errors, "ref_len": ec.ref_len,
                              "substitutions": ec.substitutions, "deletions": ec.deletions,
                              "insertions": ec.insertions}, metric=metric)
    if task in (TaskType.BFCL, TaskType.SPEECHFC):
        category = str(record.get("bfcl_category") or record.get("category") or "simple")
        if record.get("expected_behavior") == "no_call":
            category = "irrelevance"
        res = check_bfcl(prediction, record["tools"], record["ground_truth"], bfcl_mode(category))
        return item(float(res.valid), res.to_dict())
    if task is TaskType.ACEBENCH:
        res = check_acebench(prediction, record["tools"], record["ground_truth"])
        return item(float(res.valid), res.to_dict())
    if task is TaskType.OPEN:
        return item(None, {"note": "open-ended; needs an LLM judge"}, metric="judge")
    raise ValueError(f"no scorer for task {task!r}")
