"""Every system prompt the project uses, in one place.

The released model was trained with one prompt per output mode; what matters to it is the mode the
prompt names (text only, or text and speech together).  The wording here is ours.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

#: Speech (or text) in, text out: the SRH is not run.
SPEECH_TO_TEXT = "You are a helpful voice assistant. Reply with text tokens only."

#: Speech (or text) in, text and speech out in parallel.
SPEECH_TO_SPEECH = (
    "You are a helpful voice assistant. Reply with text tokens and speech tokens at the same time."
)

#: A friendlier persona for spoken chat: short, natural replies.
SPOKEN_CHAT = (
    SPEECH_TO_SPEECH
    + " Speak naturally and warmly, answer in one to three short sentences, and avoid lists or markup,"
    " since the reply is heard rather than read."
)

#: Automatic speech recognition as an instruction to the model.
TRANSCRIBE_INSTRUCTION = "Transcribe the audio exactly."

_TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to help with the user's request. "
    "The available functions are listed, one JSON signature per line, inside <tools></tools>:\n<tools>\n"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each call, reply with a JSON object holding the function name and its arguments, "
    'inside <tool_call></tool_call> tags, for example:\n<tool_call>\n{"name": "function_name", '
    '"arguments": {"arg": "value"}}\n</tool_call>'
)


def function_calling_prompt(tools: Sequence[dict], base: str = SPEECH_TO_TEXT) -> str:
    """A system prompt listing ``tools`` (JSON schemas, OpenAI or plain form) for ``<tool_call>`` output."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False, sort_keys=False) for t in tools)
    return base + _TOOLS_HEADER + lines + _TOOLS_FOOTER


def system_prompt(mode: str) -> str:
    """The default system prompt for a generation mode: ``"s2t"``, ``"s2s"`` or ``"chat"``."""
    prompts = {"s2t": SPEECH_TO_TEXT, "t2t": SPEECH_TO_TEXT, "s2s": SPEECH_TO_SPEECH, "t2s": SPEECH_TO_SPEECH, "chat": SPOKEN_CHAT}
    if mode not in prompts:
        raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(prompts)}")
    return prompts[mode]
