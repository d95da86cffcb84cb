"""Function calling: tool calls out of a reply, tool results back in as a turn."""

from __future__ import annotations

import json
from typing import Any

from funaudiochat.evaluation.function_calling import NO_CALL, parse_tool_calls
from funaudiochat.processing import Message


def tool_calls_from_text(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """``[{"name", "arguments"}]`` for every ``<tool_call>`` block, and the problems found.

    Malformed output is reported, never raised: the caller decides whether to retry or apologise.
    """
    parsed = parse_tool_calls(text)
    calls = [{"name": name, "arguments": args} for call in parsed.calls for name, args in call.items()]
    errors = [] if parsed.error in (None, NO_CALL) else [f"{parsed.error}: {parsed.message}"]
    return calls, errors


def tool_result_message(name: str, result: Any) -> Message:
    """A ``tool`` turn carrying a call's result (JSON-encoded unless already a string)."""
    content = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    return Message("tool", json.dumps({"name": name, "content": content}, ensure_ascii=False))
