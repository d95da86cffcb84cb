"""Model-independent benchmark scoring for Fun-Audio-Chat (pure Python, no torch).

Modules: datasets (loading + task registry), normalize / wer (ASR), qa (short answer, multiple
choice, refusal), ifeval (+ language_id), function_calling (BFCL / ACEBench), report (run JSON,
Markdown, charts) and scoring (one call per record).
"""

from funaudiochat.evaluation.datasets import KNOWN_SETS, TaskType, infer_task, load_jsonl_set
from funaudiochat.evaluation.report import ScoredItem
from funaudiochat.evaluation.scoring import score_record

__all__ = ["KNOWN_SETS", "TaskType", "infer_task", "load_jsonl_set", "ScoredItem", "score_record"]
