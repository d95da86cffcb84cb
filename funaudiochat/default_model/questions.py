"""Which questions the default model is trained on, chosen so evaluation stays honest.

Only benchmark *dev* splits are read, and of those only a deterministic "train" half of
``web_questions`` and ``triviaqa`` (by sha1 of the item id).  The other half and all of
``llama_questions`` are kept for evaluation.  Without the benchmark folder the build falls back to a
small built-in list of templated questions, so the product never needs ``../shared``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

#: Sets whose dev split is halved (train / eval); everything else in TRAIN_SETS order.
TRAIN_SETS = ("web_questions", "triviaqa")
#: Sets kept entirely for evaluation.
EVAL_ONLY_SETS = ("llama_questions",)

Half = Literal["train", "eval"]


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    source: str
    answers: tuple[str, ...] = field(default_factory=tuple)


def split_half(item_id: str) -> Half:
    """Deterministic half of an item: the parity of the first byte of sha1(id)."""
    return "train" if hashlib.sha1(item_id.encode("utf-8")).digest()[0] % 2 == 0 else "eval"


def clean_question(text: str) -> str:
    """Undo CSV-style quoting some sources keep (``"He said ""hi""?"`` -> ``He said "hi"?``)."""
    text = text.strip()
    if len(text) > 1 and text[0] == text[-1] == '"' and '""' in text:
        text = text[1:-1].replace('""', '"')
    return text


def _read_dev(path: Path, source: str) -> list[Question]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(Question(str(obj["id"]), clean_question(str(obj["question"])), source,
                                tuple(str(a) for a in obj.get("answers", []))))
        except (json.JSONDecodeError, KeyError) as exc:
            raise ValueError(f"{path}:{n}: not a question record ({exc})") from exc
    return out


def benchmark_split(benchdata: str | Path) -> tuple[list[Question], list[Question]]:
    """(train, eval) questions from the dev splits under ``benchdata``; disjoint by construction."""
    root = Path(benchdata)
    train: list[Question] = []
    evaluation: list[Question] = []
    for name in TRAIN_SETS + EVAL_ONLY_SETS:
        path = root / name / "dev.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"benchmark dev split not found: {path}")
        for q in _read_dev(path, name):
            if name in TRAIN_SETS and split_half(q.id) == "train":
                train.append(q)
            else:
                evaluation.append(q)
    return train, evaluation


def builtin_questions() -> list[Question]:
    """Templated arithmetic and simple-fact questions (our own), used when no benchmark data exists."""
    qs = []
    for a, b in ((2, 3), (4, 5), (7, 8), (6, 9), (12, 5), (10, 10), (3, 14), (9, 9)):
        qs.append(Question(f"builtin_add_{a}_{b}", f"What is {a} plus {b}?", "builtin", (str(a + b),)))
    for a, b in ((3, 4), (5, 6), (7, 7), (8, 2), (9, 3), (6, 6)):
        qs.append(Question(f"builtin_mul_{a}_{b}", f"What is {a} times {b}?", "builtin", (str(a * b),)))
    facts = (
        ("capital_japan", "What is the capital of Japan?", "Tokyo"),
        ("capital_italy", "What is the capital of Italy?", "Rome"),
        ("capital_canada", "What is the capital of Canada?", "Ottawa"),
        ("days_week", "How many days are there in a week?", "seven"),
        ("months_year", "How many months are there in a year?", "twelve"),
        ("sky_color", "What color is a clear sky during the day?", "blue"),
        ("water_freeze", "At what temperature in Celsius does water freeze?", "zero"),
        ("sun_rise", "In which direction does the sun rise?", "east"),
        ("legs_spider", "How many legs does a spider have?", "eight"),
        ("largest_ocean", "What is the largest ocean on Earth?", "Pacific"),
    )
    qs += [Question(f"builtin_{k}", text, "builtin", (ans,)) for k, text, ans in facts]
    return qs


def training_questions(benchdata: str | Path | None, limit: int | None = None) -> list[Question]:
    """The build's training questions: the benchmark train half, or the built-in list as fallback.

    ``limit`` keeps a deterministic subset (the first items in sha1 order) for smoke builds.
    """
    if benchdata is not None and Path(benchdata).is_dir():
        train, evaluation = benchmark_split(benchdata)
        logger.info("questions: %d train / %d eval items from %s", len(train), len(evaluation), benchdata)
    else:
        logger.warning("questions: benchmark data %s not found; using the %d built-in templated questions",
                       benchdata, len(builtin_questions()))
        train = builtin_questions()
    train = sorted(train, key=lambda q: hashlib.sha1(q.id.encode("utf-8")).hexdigest())
    return train[:limit] if limit is not None else train


def write_questions(path: str | Path, questions: list[Question]) -> Path:
    """Record exactly which questions were used (one JSON object a line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(asdict(q), ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    tmp.replace(path)
    return path


def read_questions(path: str | Path) -> list[Question]:
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(Question(obj["id"], obj["text"], obj["source"], tuple(obj.get("answers", ()))))
        except (json.JSONDecodeError, KeyError) as exc:
            raise ValueError(f"{path}:{n}: bad question record ({exc})") from exc
    return out
