"""Function calling: prompt, parsing of model output, tool results as a turn."""

import json

from funaudiochat.generation.tools import tool_calls_from_text, tool_result_message
from funaudiochat.processing import FunAudioChatProcessor
from funaudiochat.prompts import function_calling_prompt

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_prompt_lists_every_tool_as_one_json_line():
    prompt = function_calling_prompt([WEATHER, {"name": "battery"}])
    body = prompt.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(line) for line in body] == [WEATHER, {"name": "battery"}]
    assert "<tool_call>" in prompt


def test_valid_and_several_calls():
    text = 'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' \
           '<tool_call>{"name": "battery", "arguments": {}}</tool_call>'
    calls, errors = tool_calls_from_text(text)
    assert calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "battery", "arguments": {}}]
    assert errors == []


def test_malformed_output_is_reported_not_raised():
    calls, errors = tool_calls_from_text('<tool_call>{"name": "get_weather", "arguments": {city: Paris}}</tool_call>')
    assert calls == [] and errors and errors[0].startswith("malformed_json")
    calls, errors = tool_calls_from_text('<tool_call>{"name": "get_weather"')
    assert calls == [] and errors[0].startswith("unclosed_tool_call")
    assert tool_calls_from_text("It is sunny in Paris.") == ([], [])


def test_tool_result_becomes_a_turn():
    from funaudiochat.config import tiny_config
    from funaudiochat.testing import word_tokenizer

    msg = tool_result_message("get_weather", {"temp_c": 21})
    assert msg.role == "tool" and json.loads(msg.text) == {"name": "get_weather", "content": '{"temp_c": 21}'}
    proc = FunAudioChatProcessor(word_tokenizer(vocab_size=512), tiny_config())
    ex = proc.encode([msg], add_generation_prompt=True)
    assert set(ex.labels) == {-100} and len(ex.input_ids) > 5
