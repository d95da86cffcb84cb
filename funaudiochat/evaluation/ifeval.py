"""IFEval instruction checkers and strict / loose accuracy (Zhou et al. 2023), our own code.

Each checker takes the response and the instruction's kwargs and returns True if the instruction
is followed.  Rules follow the IFEval definitions: counts use ``relation`` "less than" (``<``) or
"at least" (``>=``); paragraphs are separated by ``***`` (number_paragraphs) or blank lines
(nth_paragraph_first_word); bullets are lines starting with ``*`` or ``-``; highlights are
``*text*`` or ``**text**``; titles are ``<<title>>``.

Loose evaluation re-checks each instruction on variants of the response (first line removed,
last line removed, both removed, each with and without ``*``) and counts it followed if any
non-empty variant passes.  Prompt-level accuracy needs every instruction of a prompt followed;
instruction-level accuracy counts instructions.

Language checks use our own ``language_id.detect_language`` instead of `langdetect`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from funaudiochat.evaluation.language_id import detect_language

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKERS",
    "check_instruction",
    "IFEvalResult",
    "evaluate_response",
    "ifeval_accuracy",
    "count_words",
    "count_sentences",
    "loose_variants",
]


def _compare(count: int, relation: str, n: int) -> bool:
    if relation == "less than":
        return count < n
    if relation == "at least":
        return count >= n
    raise ValueError(f"unknown relation {relation!r}; expected 'less than' or 'at least'")


def count_words(text: str) -> int:
    """Words as runs of word characters (IFEval tokenises with ``\\w+``)."""
    return len(re.findall(r"\w+", text))


_ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e",
                  "inc", "ltd", "co", "no", "fig", "approx", "u.s", "a.m", "p.m")


def count_sentences(text: str) -> int:
    """Sentences ending in . ! ? (possibly followed by quotes/brackets) and whitespace or the
    end; common abbreviations, initials and decimals do not end a sentence."""
    protected = text
    for abbr in _ABBREVIATIONS:
        protected = re.sub(rf"(?i)\b{re.escape(abbr)}\.", lambda m: m.group(0)[:-1] + "\x00",
                           protected)
    protected = re.sub(r"\b([A-Z])\.(?=\s+[A-Z])", "\\1\x00", protected)  # initials "J. Smith"
    parts = re.split(r"(?<=[.!?])[\"'”’)\]]*\s+", protected.strip())
    return sum(1 for p in parts if re.search(r"\w", p))


# -------------------------------------------------------------------------------------------
# Individual checkers: (response, **kwargs) -> bool
# -------------------------------------------------------------------------------------------

def _capital_word_frequency(r: str, capital_frequency: int, capital_relation: str) -> bool:
    words = re.findall(r"\b\w+\b", r)
    return _compare(sum(1 for w in words if w.isupper()), capital_relation, capital_frequency)


def _english_capital(r: str) -> bool:
    return r.isupper() and detect_language(r) == "en"


def _english_lowercase(r: str) -> bool:
    return r.islower() and detect_language(r) == "en"


def _repeat_prompt(r: str, prompt_to_repeat: str) -> bool:
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _two_responses(r: str) -> bool:
    parts = r.split("******")
    valid = []
    for i, p in enumerate(parts):
        if not p.strip():
            if 0 < i < len(parts) - 1:
                return False  # an empty response between two separators
        else:
            valid.append(p.strip())
    return len(valid) == 2 and valid[0] != valid[1]


def _number_placeholders(r: str, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", r)) >= num_placeholders


def _postscript(r: str, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    low = r.lower()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, low, flags=re.MULTILINE))


_CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _constrained_response(r: str) -> bool:
    r = r.strip()
    return any(opt in r for opt in _CONSTRAINED_OPTIONS)


def _json_format(r: str) -> bool:
    s = r.strip()
    s = re.sub(r"^```(?:json|Json|JSON)?\s*", "", s)
    s = re.sub(r"\s*```$", "", s).strip()
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


def _multiple_sections(r: str, section_spliter: str, num_sections: int) -> bool:
    sections = re.split(r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?", r)
    return len(sections) - 1 >= num_sections


def _number_bullet_lists(r: str, num_bullets: int) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def _number_highlighted_sections(r: str, num_highlights: int) -> bool:
    count = 0
    for h in re.findall(r"\*[^\n\*]*\*", r):
        if h.strip("*").strip():
            count += 1
    for h in re.findall(r"\*\*[^\n\*]*\*\*", r):
        if h.removeprefix("**").removesuffix("**").strip():
            count += 1
    return count >= num_highlights


def _title(r: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def _existence(r: str, keywords: Sequence[str]) -> bool:
    return all(re.search(re.escape(k), r, flags=re.IGNORECASE) for k in keywords)


def _forbidden_words(r: str, forbidden_words: Sequence[str]) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, flags=re.IGNORECASE)
                   for w in forbidden_words)


def _frequency(r: str, keyword: str, frequency: int, relation: str) -> bool:
    return _compare(len(re.findall(re.escape(keyword), r, flags=re.IGNORECASE)), relation,
                    frequency)


def _letter_frequency(r: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    return _compare(Counter(r.lower())[letter.lower()], let_relation, let_frequency)


def _response_language(r: str, language: str) -> bool:
    return detect_language(r) == language


def _nth_paragraph_first_word(r: str, num_paragraphs: int, nth_paragraph: int,
                              first_word: str) -> bool:
    paragraphs = re.split(r"\n\n", r)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count or nth_paragraph > len(paragraphs):
        return False
    para = paragraphs[nth_paragraph - 1].strip()
    if not para:
        return False
    word = para.split()[0].lstrip("'\"")
    got = []
    for ch in word:
        if ch in ".,?!'\"":
            break
        got.append(ch.lower())
    return count == num_paragraphs and "".join(got) == first_word.lower()


def _number_paragraphs(r: str, num_paragraphs: int) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", r)
    count = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def _number_sentences(r: str, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(r), relation, num_sentences)


def _number_words(r: str, num_words: int, relation: str) -> bool:
    return _compare(count_words(r), relation, num_words)


def _no_comma(r: str) -> bool:
    return "," not in r


def _end_checker(r: str, end_phrase: str) -> bool:
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _quotation(r: str) -> bool:
    s = r.strip()
    return len(s) > 1 and s[0] == '"' and s[-1] == '"'


CHECKERS: Mapping[str, Callable[..., bool]] = MappingProxyType({
    "change_case:capital_word_frequency": _capital_word_frequency,
    "change_case:english_capital": _english_capital,
    "change_case:english_lowercase": _english_lowercase,
    "combination:repeat_prompt": _repeat_prompt,
    "combination:two_responses": _two_responses,
    "detectable_content:number_placeholders": _number_placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:constrained_response": _constrained_response,
    "detectable_format:json_format": _json_format,
    "detectable_format:multiple_sections": _multiple_sections,
    "detectable_format:number_bullet_lists": _number_bullet_lists,
    "detectable_format:number_highlighted_sections": _number_highlighted_sections,
    "detectable_format:title": _title,
    "keywords:existence": _existence,
    "keywords:forbidden_words": _forbidden_words,
    "keywords:frequency": _frequency,
    "keywords:letter_frequency": _letter_frequency,
    "language:response_language": _response_language,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "length_constraints:number_paragraphs": _number_paragraphs,
    "length_constraints:number_sentences": _number_sentences,
    "length_constraints:number_words": _number_words,
    "punctuation:no_comma": _no_comma,
    "startend:end_checker": _end_checker,
    "startend:quotation": _quotation,
})


def check_instruction(instruction_id: str, response: str,
                      kwargs: Mapping[str, Any] | None = None) -> bool:
    """Strict check of one instruction; ``None``-valued kwargs are ignored."""
    try:
        fn = CHECKERS[instruction_id]
    except KeyError:
        raise ValueError(f"unsupported IFEval instruction {instruction_id!r}") from None
    clean = {k: v for k, v in (kwargs or {}).items() if v is not None}
    try:
        return bool(fn(response, **clean))
    except TypeError as exc:
        raise ValueError(f"{instruction_id}: bad kwargs {sorted(clean)}: {exc}") from exc


def loose_variants(response: str) -> list[str]:
    """The eight response variants of IFEval's loose mode."""
    lines = response.split("\n")
    no_first = "\n".join(lines[1:]).strip()
    no_last = "\n".join(lines[:-1]).strip()
    no_both = "\n".join(lines[1:-1]).strip()
    base = [response, no_first, no_last, no_both]
    return base + [v.replace("*", "") for v in base]


@dataclass(frozen=True)
class IFEvalResult:
    """Per-prompt outcome: one bool per instruction, strict and loose."""

    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)


def evaluate_response(record: Mapping[str, Any], response: str) -> IFEvalResult:
    """Check a response against an ``ifeval`` record (``instruction_id_list`` + ``kwargs``)."""
    ids = record["instruction_id_list"]
    kwargs_list = record.get("kwargs") or [{}] * len(ids)
    if len(kwargs_list) != len(ids):
        raise ValueError(f"record {record.get('id')!r}: {len(ids)} instructions but "
                         f"{len(kwargs_list)} kwargs")
    variants = [v for v in loose_variants(response) if v.strip()]
    strict, loose = [], []
    for iid, kw in zip(ids, kwargs_list):
        strict.append(bool(response.strip()) and check_instruction(iid, response, kw))
        loose.append(any(check_instruction(iid, v, kw) for v in variants))
    return IFEvalResult(tuple(strict), tuple(loose))


def ifeval_accuracy(results: Sequence[IFEvalResult]) -> dict[str, float]:
    """Prompt- and instruction-level accuracy, strict and loose."""
    if not results:
        raise ValueError("ifeval_accuracy: no results")
    n_inst = sum(len(r.strict) for r in results)
    return {
        "prompt_strict": sum(r.prompt_strict for r in results) / len(results),
        "prompt_loose": sum(r.prompt_loose for r in results) / len(results),
        "instruction_strict": sum(sum(r.strict) for r in results) / n_inst,
        "instruction_loose": sum(sum(r.loose) for r in results) / n_inst,
    }
