"""Function-calling scoring: `<tool_call>` parsing, a BFCL-style AST checker and an ACEBench
checker.

The BFCL rules (facts from the Berkeley Function Calling Leaderboard's AST evaluation, code is our
own): the function name must match (a '.' in the expected name may appear as '_'), every required
parameter must be present, no parameter outside the schema/answer may appear, each value must have
the schema type (an int is accepted for a float) and be among the allowed values (strings compared
case-insensitively with spaces and ``,./-_*^`` removed), and an answer parameter whose allowed list
lacks ``""`` must be given.  "multiple" scores the single call against the expected function,
"parallel" matches calls without order, "irrelevance" is correct when no call is made.

ACEBench ground truth gives one exact value per argument; several candidate answers may be listed
(any match counts) and repeated calls of one function carry ``_1``/``_2`` name suffixes.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "ParsedCalls",
    "CheckResult",
    "parse_tool_calls",
    "unwrap_tools",
    "check_bfcl",
    "check_acebench",
    "bfcl_mode",
]

# Error categories of parse_tool_calls.
NO_CALL = "no_call"
MALFORMED_JSON = "malformed_json"
BAD_STRUCTURE = "bad_call_structure"
UNCLOSED = "unclosed_tool_call"

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ParsedCalls:
    """Calls parsed from model text as ``[{name: arguments}]``; ``error`` is None or a category
    (no_call, malformed_json, bad_call_structure, unclosed_tool_call)."""

    calls: tuple[dict[str, dict[str, Any]], ...]
    error: str | None = None
    message: str = ""


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one checker call; ``error_type`` is a short category for error tables."""

    valid: bool
    error_type: str | None = None
    errors: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "error_type": self.error_type, "errors": list(self.errors)}


def _ok() -> CheckResult:
    return CheckResult(True)


def _fail(error_type: str, message: str) -> CheckResult:
    return CheckResult(False, error_type, (message,))


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

def _call_from_obj(obj: Any) -> dict[str, dict[str, Any]]:
    """``{"name": n, "arguments": {...}}`` -> ``{n: {...}}``; raises ValueError if malformed."""
    if not isinstance(obj, dict):
        raise ValueError(f"tool call is a {type(obj).__name__}, expected an object")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("tool call has no string 'name'")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"arguments string of {name!r} is not JSON: {exc.msg}") from exc
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ValueError(f"arguments of {name!r} is a {type(args).__name__}, expected an object")
    return {name: args}


def parse_tool_calls(text: str) -> ParsedCalls:
    """Parse every ``<tool_call>{json}</tool_call>`` block; never raises on model output.

    A block holding a JSON list of call objects yields each of them.  The first problem found
    sets ``error``; well-formed blocks are still returned in ``calls``.
    """
    if not isinstance(text, str):
        return ParsedCalls((), BAD_STRUCTURE, f"model output is a {type(text).__name__}")
    calls: list[dict[str, dict[str, Any]]] = []
    error: str | None = None
    message = ""
    blocks = _TOOL_CALL_RE.findall(text)
    rest = _TOOL_CALL_RE.sub("", text)
    if "<tool_call>" in rest:
        error, message = UNCLOSED, "a <tool_call> block is not closed"
    for block in blocks:
        try:
            obj = json.loads(block.strip())
        except json.JSONDecodeError as exc:
            if error is None:
                error, message = MALFORMED_JSON, f"invalid JSON in tool call: {exc.msg}"
            continue
        items = obj if isinstance(obj, list) else [obj]
        for item in items:
            try:
                calls.append(_call_from_obj(item))
            except ValueError as exc:
                if error is None:
                    error, message = BAD_STRUCTURE, str(exc)
    if not calls and error is None:
        error, message = NO_CALL, "no <tool_call> block in output"
    return ParsedCalls(tuple(calls), error, message)


def unwrap_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tool schemas as ``{name, description, parameters}``, unwrapping OpenAI ``{"type":
    "function", "function": {...}}`` entries."""
    out = []
    for t in tools:
        if t.get("type") == "function" and isinstance(t.get("function"), Mapping):
            out.append(dict(t["function"]))
        else:
            out.append(dict(t))
    return out


def _as_calls(output: str | Sequence[Mapping[str, Any]] | ParsedCalls) -> ParsedCalls:
    if isinstance(output, ParsedCalls):
        return output
    if isinstance(output, str):
        return parse_tool_calls(output)
    calls = []
    for c in output:
        if not isinstance(c, Mapping) or len(c) != 1:
            return ParsedCalls((), BAD_STRUCTURE, "each call must be a one-key {name: args} dict")
        calls.append(dict(c))
    return ParsedCalls(tuple(calls), None if calls else NO_CALL)


# --------------------------------------------------------------------------------------------
# BFCL AST checker
# --------------------------------------------------------------------------------------------

_TYPE_MAP: dict[str, type | None] = {
    "string": str, "integer": int, "float": float, "number": float, "boolean": bool,
    "bool": bool, "array": list, "tuple": list, "dict": dict, "object": dict, "any": None,
}
_STD_RE = re.compile(r"[ ,./\-_*^]")


def _std(s: str) -> str:
    """BFCL string standardisation: drop spaces and ,./-_*^ ; lower-case; ' -> "."""
    return _STD_RE.sub("", s).lower().replace("'", '"')


def _std_any(v: Any) -> Any:
    return _std(v) if isinstance(v, str) else v


def _name_matches(model_name: str, expected: str) -> bool:
    return model_name == expected or model_name == expected.replace(".", "_")


def _find_tool(tools: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    for t in tools:
        if t.get("name") == name:
            return t
    for t in tools:  # tolerate a mangled name in the answer key
        if str(t.get("name", "")).replace(".", "_") == name.replace(".", "_"):
            return t
    return None


def _py_type(schema_type: Any) -> type | None:
    if isinstance(schema_type, list):  # e.g. ["string", "null"]: treat as untyped
        return None
    return _TYPE_MAP.get(str(schema_type), None)


def _type_ok(value: Any, py: type | None) -> bool:
    if py is None:
        return True
    if py is float:
        return type(value) in (float, int)
    return type(value) is py


def _dict_ok(value: dict, allowed: Sequence[Any]) -> bool:
    """A dict value matches if some allowed dict accepts every key (allowed dicts map keys to
    lists of allowed values; a key whose list has "" may be omitted)."""
    for cand in allowed:
        if not isinstance(cand, Mapping):
            continue
        good = True
        for k, v in value.items():
            if k not in cand:
                good = False
                break
            opts = cand[k] if isinstance(cand[k], list) else [cand[k]]
            if isinstance(v, dict):
                if not _dict_ok(v, opts):
                    good = False
                    break
            elif _std_any(v) not in [_std_any(o) for o in opts]:
                good = False
                break
        if good:
            for k, opts in cand.items():
                if k not in value and "" not in (opts if isinstance(opts, list) else [opts]):
                    good = False
                    break
        if good:
            return True
    return False


def _list_dict_ok(value: list, allowed: Sequence[Any]) -> bool:
    for cand in allowed:
        if isinstance(cand, list) and len(cand) == len(value) and all(
                isinstance(v, dict) and _dict_ok(v, [c]) for v, c in zip(value, cand)):
            return True
    return False


def _scalar_in(value: Any, allowed: Sequence[Any]) -> bool:
    """Membership that keeps booleans apart from 0/1 (Python treats True == 1)."""
    for a in allowed:
        if a == "" and value != "":
            continue
        if type(value) is bool or type(a) is bool:
            if type(value) is type(a) and value == a:
                return True
        elif value == a:
            return True
    return False


def _check_param(param: str, value: Any, allowed: list[Any],
                 schema: Mapping[str, Any]) -> CheckResult:
    expected = schema.get("type", "any")
    py = _py_type(expected)
    answer_types = {type(a) for a in allowed if a != ""}
    # An answer whose type differs from the schema type names a variable; accept that type.
    is_variable = py is not None and bool(answer_types) and not any(
        _type_ok(a, py) for a in allowed if a != "")
    if not _type_ok(value, py):
        if not (is_variable and type(value) in answer_types):
            return _fail("type_error", f"{param}: expected {expected}, got {type(value).__name__}")
        if value not in allowed:
            return _fail("value_error:variable", f"{param}: {value!r} not in {allowed!r}")
        return _ok()
    if py is float and type(value) is int:
        value = float(value)
    if isinstance(value, list):
        item_schema = schema.get("items", {}) if isinstance(schema.get("items"), Mapping) else {}
        item_py = _py_type(item_schema.get("type", "any"))
        bad = [v for v in value if not _type_ok(v, item_py)]
        if bad:
            return _fail("type_error:nested",
                         f"{param}: list items must be {item_schema.get('type')}, got {bad[0]!r}")
        if value and all(isinstance(v, dict) for v in value):
            if _list_dict_ok(value, allowed):
                return _ok()
            return _fail("value_error:list_dict", f"{param}: {value!r} matches no allowed list")
        std_value = [_std_any(v) for v in value]
        for cand in allowed:
            if isinstance(cand, list) and [_std_any(c) for c in cand] == std_value:
                return _ok()
        return _fail("value_error:list", f"{param}: {value!r} not in {allowed!r}")
    if isinstance(value, dict):
        if _dict_ok(value, allowed):
            return _ok()
        return _fail("value_error:dict", f"{param}: {value!r} matches no allowed dict")
    if isinstance(value, str):
        if _std(value) in [_std(a) for a in allowed if isinstance(a, str) and a != ""]:
            return _ok()
        return _fail("value_error:string", f"{param}: {value!r} not in {allowed!r}")
    if _scalar_in(value, allowed):
        return _ok()
    return _fail("value_error:others", f"{param}: {value!r} not in {allowed!r}")


def _check_call(tool: Mapping[str, Any], call: Mapping[str, Mapping[str, Any]],
                answer_name: str, answer: Mapping[str, list[Any]]) -> CheckResult:
    """One model call against one expected call (BFCL's simple-function check)."""
    model_name, args = next(iter(call.items()))
    if not _name_matches(model_name, answer_name):
        return _fail("wrong_func_name", f"expected {answer_name!r}, got {model_name!r}")
    if not isinstance(args, Mapping):
        return _fail("bad_call_structure", f"arguments of {model_name!r} are not an object")
    params = tool.get("parameters", {}) or {}
    props = params.get("properties", {}) or {}
    for req in params.get("required", []) or []:
        if req not in args:
            return _fail("missing_required", f"required parameter {req!r} missing")
    for param, value in args.items():
        if param not in props or param not in answer:
            return _fail("unexpected_param", f"unexpected parameter {param!r}")
        allowed = answer[param] if isinstance(answer[param], list) else [answer[param]]
        res = _check_param(param, value, allowed, props[param])
        if not res.valid:
            return res
    for param, allowed in answer.items():
        if param not in args and "" not in (allowed if isinstance(allowed, list) else [allowed]):
            return _fail("missing_optional", f"parameter {param!r} not given and not optional")
    return _ok()


def bfcl_mode(category: str) -> str:
    """Map a BFCL/SpeechFC category name to simple / multiple / parallel / irrelevance."""
    c = category.lower()
    if "irrelevance" in c or "relevance" in c:
        return "irrelevance"
    if "parallel" in c:
        return "parallel"
    if "multiple" in c or "single" in c:
        return "multiple"
    return "simple"


def check_bfcl(output: str | Sequence[Mapping[str, Any]] | ParsedCalls,
               tools: Sequence[Mapping[str, Any]], ground_truth: Sequence[Mapping[str, Any]],
               mode: str = "simple") -> CheckResult:
    """BFCL AST check of model output (raw text, call list or ParsedCalls).

    ``mode`` is simple, multiple, parallel (order-free; parallel_multiple too) or irrelevance.
    """
    if mode not in ("simple", "multiple", "parallel", "irrelevance"):
        raise ValueError(f"unknown BFCL mode {mode!r}")
    parsed = _as_calls(output)
    if mode == "irrelevance":
        if parsed.calls:
            return _fail("irrelevance:called", f"expected no call, got {len(parsed.calls)}")
        return _ok()
    if parsed.error is not None:
        return _fail(f"parse:{parsed.error}", parsed.message or parsed.error)
    tools = unwrap_tools(tools)
    calls = list(parsed.calls)
    answers = [next(iter(a.items())) for a in ground_truth]
    if len(calls) != len(answers):
        return _fail("wrong_count", f"expected {len(answers)} call(s), got {len(calls)}")
    if mode in ("simple", "multiple"):
        name, answer = answers[0]
        tool = _find_tool(tools, name)
        if tool is None:
            return _fail("schema_missing", f"no tool schema for expected function {name!r}")
        return _check_call(tool, calls[0], name, answer)
    used: set[int] = set()
    for name, answer in answers:
        tool = _find_tool(tools, name)
        if tool is None:
            return _fail("schema_missing", f"no tool schema for expected function {name!r}")
        last: CheckResult | None = None
        for idx, call in enumerate(calls):
            if idx in used:
                continue
            last = _check_call(tool, call, name, answer)
            if last.valid:
                used.add(idx)
                break
        else:
            detail = last.errors[0] if last and last.errors else "no candidate"
            return _fail("parallel:no_match", f"no call matches expected {name!r} ({detail})")
    return _ok()


# --------------------------------------------------------------------------------------------
# ACEBench checker
# --------------------------------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september",
     "october", "november", "december"], start=1)}
_MONTHS.update({k[:3]: v for k, v in list(_MONTHS.items())})
_MONTHS["sept"] = 9


def _parse_date(s: str) -> str | None:
    """ISO form of a string that is exactly a calendar date in a common format, else None."""
    t = s.strip().lower().rstrip(".")
    m = (re.fullmatch(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})", t)
         or re.fullmatch(r"(\d{4})年(\d{1,2})月(\d{1,2})[日号]", t))
    if m:
        y, mo, d = int(m[1]), int(m[2]), int(m[3])
    else:
        m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", t)
        if m:
            mo, d, y = int(m[1]), int(m[2]), int(m[3])
        else:
            m = re.fullmatch(r"([a-z]+)\.? (\d{1,2})(?:st|nd|rd|th)?,? (\d{4})", t)
            if m and m[1] in _MONTHS:
                mo, d, y = _MONTHS[m[1]], int(m[2]), int(m[3])
            else:
                m = re.fullmatch(r"(\d{1,2})(?:st|nd|rd|th)? ([a-z]+)\.?,? (\d{4})", t)
                if not (m and m[2] in _MONTHS):
                    return None
                d, mo, y = int(m[1]), _MONTHS[m[2]], int(m[3])
    try:
        return date(y, mo, d).isoformat()
    except ValueError:
        return None


def _ace_std(s: str) -> str:
    """Lower-case, full-width -> half-width, drop whitespace and punctuation (incl. CJK)."""
    s = unicodedata.normalize("NFKC", s).lower()
    return "".join(ch for ch in s if not (ch.isspace() or unicodedata.category(ch)[0] in "PS"))


def _ace_equal(model: Any, expected: Any, path: str) -> str | None:
    """None if equal under ACEBench-style leniency, else a message naming the first mismatch."""
    if isinstance(expected, bool) or isinstance(model, bool):
        if type(model) is bool and type(expected) is bool and model == expected:
            return None
        return f"{path}: expected {expected!r}, got {model!r}"
    if isinstance(expected, (int, float)):
        if isinstance(model, (int, float)) and float(model) == float(expected):
            return None
        return f"{path}: expected {expected!r}, got {model!r}"
    if isinstance(expected, str):
        if not isinstance(model, str):
            return f"{path}: expected string {expected!r}, got {model!r}"
        de, dm = _parse_date(expected), _parse_date(model)
        if de is not None and dm is not None:
            return None if de == dm else f"{path}: date {model!r} != {expected!r}"
        if _ace_std(model) == _ace_std(expected):
            return None
        return f"{path}: expected {expected!r}, got {model!r}"
    if isinstance(expected, list):
        if not isinstance(model, list) or len(model) != len(expected):
            return f"{path}: expected list of {len(expected)}, got {model!r}"
        for i, (m, e) in enumerate(zip(model, expected)):
            err = _ace_equal(m, e, f"{path}[{i}]")
            if err:
                return err
        return None
    if isinstance(expected, dict):
        if not isinstance(model, dict):
            return f"{path}: expected object, got {model!r}"
        missing = [k for k in expected if k not in model]
        if missing:
            return f"{path}: missing key {missing[0]!r}"
        extra = [k for k in model if k not in expected]
        if extra:
            return f"{path}: unexpected key {extra[0]!r}"
        for k, e in expected.items():
            err = _ace_equal(model[k], e, f"{path}.{k}" if path else k)
            if err:
                return err
        return None
    if expected is None:
        return None if model is None else f"{path}: expected null, got {model!r}"
    return f"{path}: unsupported expected value {expected!r}"


def _strip_suffix(name: str, tool_names: set[str]) -> str:
    """``func_1`` -> ``func`` unless ``func_1`` is itself a tool name."""
    if name in tool_names:
        return name
    base = re.sub(r"_\d+$", "", name)
    return base


def _ace_candidate(calls: list[dict[str, dict[str, Any]]], candidate: Mapping[str, Any],
                   tool_names: set[str]) -> CheckResult:
    expected = [(_strip_suffix(n, tool_names), a) for n, a in candidate.items()]
    if len(calls) != len(expected):
        return _fail("wrong_count", f"expected {len(expected)} call(s), got {len(calls)}")

    def err_for(call: dict[str, dict[str, Any]], exp: tuple[str, Any]) -> str | None:
        name, args = next(iter(call.items()))
        if not _name_matches(name, exp[0]):
            return f"function {name!r} != {exp[0]!r}"
        return _ace_equal(args, exp[1], "")

    # Order-free matching by backtracking (call lists are short).
    first_error: list[str] = []

    def match(i: int, used: frozenset[int]) -> bool:
        if i == len(expected):
            return True
        for j, call in enumerate(calls):
            if j in used:
                continue
            err = err_for(call, expected[i])
            if err is None:
                if match(i + 1, used | {j}):
                    return True
            elif not first_error:
                first_error.append(err)
        return False

    if match(0, frozenset()):
        return _ok()
    msg = first_error[0] if first_error else "no matching call"
    kind = "wrong_func_name" if msg.startswith("function ") else "value_error"
    return _fail(kind, msg)


def check_acebench(output: str | Sequence[Mapping[str, Any]] | ParsedCalls,
                   tools: Sequence[Mapping[str, Any]],
                   ground_truth: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> CheckResult:
    """ACEBench "normal" check: correct if the calls match any candidate answer."""
    parsed = _as_calls(output)
    if parsed.error is not None:
        return _fail(f"parse:{parsed.error}", parsed.message or parsed.error)
    candidates = [ground_truth] if isinstance(ground_truth, Mapping) else list(ground_truth)
    if not candidates or not all(isinstance(c, Mapping) for c in candidates):
        raise ValueError("ACEBench ground_truth must be a dict or a non-empty list of dicts")
    tool_names = {str(t.get("name")) for t in unwrap_tools(tools)}
    calls = list(parsed.calls)
    first: CheckResult | None = None
    for cand in candidates:
        res = _ace_candidate(calls, cand, tool_names)
        if res.valid:
            return res
        first = first or res
    assert first is not None
    return first
