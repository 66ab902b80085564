"""OpenAI bodies to vlray requests, with no model: every accepted field lands where the engine reads it, bad
values are 400s naming the field, and a forced tool choice becomes a JSON schema of the call(s)."""

import json

import jsonschema
import pytest

from vlray.serving.errors import APIError
from vlray.serving.chat_service import _parse
from vlray.serving.mapping import to_completion_request, to_generation_request
from vlray.serving.protocol import ChatCompletionRequest, CompletionRequest

USER = [{"role": "user", "content": "Hi"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}


def _chat(**fields):
    return _parse(ChatCompletionRequest, json.dumps({"model": "m", "messages": USER, **fields}).encode())


def _request(**fields):
    return to_generation_request(_chat(**fields), "r").model_dump()


def test_sampling_fields_reach_the_request_and_unset_ones_stay_unset():
    request = _request(temperature=0.7, top_p=0.8, top_k=20, min_p=0.1, presence_penalty=1.5,
                       frequency_penalty=-0.5, repetition_penalty=1.05, seed=4, stop="x", max_tokens=9,
                       max_completion_tokens=5, logprobs=True, top_logprobs=4)
    assert {k: request[k] for k in ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                                    "frequency_penalty", "repetition_penalty", "seed", "stop", "max_tokens",
                                    "logprobs")} == {
        "temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.1, "presence_penalty": 1.5,
        "frequency_penalty": -0.5, "repetition_penalty": 1.05, "seed": 4, "stop": ["x"], "max_tokens": 5,
        "logprobs": 4}
    bare = _request()
    assert all(bare.get(k) is None for k in ("top_k", "min_p", "presence_penalty", "repetition_penalty",
                                             "logprobs", "response_format", "tools"))
    assert _request(top_k=-1)["top_k"] == 0  # vLLM's "off"
    assert _request(logprobs=True)["logprobs"] == 0


def test_tools_and_response_format_reach_the_request():
    assert _request(tools=[WEATHER])["tools"] == [WEATHER]
    assert _request(tools=[WEATHER], tool_choice="none").get("tools") is None
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True}}
    assert _request(response_format=fmt)["response_format"] == fmt
    assert _request(response_format={"type": "json_object"})["response_format"] == {"type": "json_object"}
    assert _request(response_format={"type": "text"}).get("response_format") is None


def test_a_named_tool_choice_is_a_schema_of_that_call():
    request = _request(tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    fmt = request["response_format"]
    assert fmt["type"] == "json_schema" and request["tools"] == [WEATHER, CLOCK]
    schema = fmt["json_schema"]["schema"]
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Paris"}}, schema)
    for wrong in ({"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {}},
                  [{"name": "get_weather", "arguments": {"city": "x"}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def test_required_is_a_schema_of_one_or_more_calls_of_any_tool():
    schema = _request(tools=[WEATHER, CLOCK], tool_choice="required")["response_format"]["json_schema"]["schema"]
    jsonschema.validate([{"name": "get_time", "arguments": {}},
                         {"name": "get_weather", "arguments": {"city": "Rome"}}], schema)
    for wrong in ([], [{"name": "nope", "arguments": {}}], {"name": "get_time", "arguments": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    single = _request(tools=[WEATHER, CLOCK], tool_choice="required", parallel_tool_calls=False)
    assert single["response_format"]["json_schema"]["schema"]["maxItems"] == 1


def test_history_with_tool_calls_and_tool_results():
    messages = USER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21"}]
    request = to_generation_request(_chat(messages=messages, tools=[WEATHER]), "r")
    assert request.messages[1].tool_calls[0].function.name == "get_weather" and request.messages[1].content is None
    assert request.messages[2].role == "tool" and request.messages[2].tool_call_id == "call_1"


def test_completions_take_the_prompt_without_the_template():
    body = _parse(CompletionRequest, json.dumps({"model": "m", "prompt": ["Once"], "max_tokens": 3,
                                                 "logprobs": 2, "top_k": 5}).encode())
    request = to_completion_request(body, "c")
    assert (request.prompt, request.chat_template, request.max_tokens) == ("Once", False, 3)
    assert request.model_dump()["logprobs"] == 2 and request.model_dump()["top_k"] == 5


BAD = {
    # field sent -> the param the 400 names
    "top_k -2": ({"top_k": -2}, "top_k"),
    "top_k float": ({"top_k": 2.5}, "top_k"),
    "min_p 1.5": ({"min_p": 1.5}, "min_p"),
    "presence_penalty 3": ({"presence_penalty": 3}, "presence_penalty"),
    "frequency_penalty -2.5": ({"frequency_penalty": -2.5}, "frequency_penalty"),
    "repetition_penalty 0": ({"repetition_penalty": 0}, "repetition_penalty"),
    "repetition_penalty 2.5": ({"repetition_penalty": 2.5}, "repetition_penalty"),
    "top_logprobs 21": ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    "top_logprobs -1": ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    "top_logprobs without logprobs": ({"top_logprobs": 2}, "top_logprobs"),
    "n 0": ({"n": 0}, "n"),
    "n 17": ({"n": 17}, "n"),
    "logit_bias": ({"logit_bias": {"1": 5}}, "logit_bias"),
    "functions": ({"functions": [{"name": "f"}]}, "functions"),
    "function_call": ({"function_call": "auto"}, "function_call"),
    "tool without function": ({"tools": [{"type": "function"}]}, "tools.0.function"),
    "tool of another type": ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools.0.type"),
    "tool name with spaces": ({"tools": [{"type": "function", "function": {"name": "a b"}}]},
                              "tools.0.function.name"),
    "tool_choice unknown": ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    "tool_choice names no tool": ({"tools": [WEATHER], "tool_choice": {"type": "function",
                                                                        "function": {"name": "x"}}}, "tool_choice"),
    "tool_choice required, no tools": ({"tool_choice": "required"}, "tool_choice"),
    "response_format unknown": ({"response_format": {"type": "xml"}}, "response_format.type"),
    "json_schema without schema": ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    "forced call and json": ({"tools": [WEATHER], "tool_choice": "required",
                              "response_format": {"type": "json_object"}}, "response_format"),
    "audio part": ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}, "messages.0.content.0"),
    "assistant without content or calls": ({"messages": [{"role": "assistant"}]}, "messages.0.content"),
    "tool message without its id": ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
    "user with tool_calls": ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages.0.tool_calls"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_values_are_400s_naming_the_field(case):
    fields, param = BAD[case]
    with pytest.raises(APIError) as info:
        _chat(**fields)
    assert info.value.status == 400 and info.value.detail.param == param, info.value.detail
    assert info.value.detail.message.startswith(param + ": ")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"])
def test_non_finite_floats_are_refused(field, value):
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "%s": %s}' % (field.encode(),
                                                                                        value.encode())
    with pytest.raises(APIError) as info:
        _parse(ChatCompletionRequest, body)
    assert info.value.detail.param == field


def test_fields_that_ask_for_nothing_are_accepted():
    _chat(logit_bias={}, functions=[], n=16, tools=[], tool_choice="none", logprobs=False, top_logprobs=0,
          response_format={"type": "text"}, parallel_tool_calls=True, top_k=0, min_p=0, presence_penalty=0)


def test_a_forced_call_reaches_the_sampling_params_as_a_json_schema(tiny_loaded):
    from vlray.inputs.preprocessor import RequestPreprocessor

    preprocessor = RequestPreprocessor(tiny_loaded.processor, tiny_loaded.max_model_len, 8, 1 << 20)
    named = {"type": "function", "function": {"name": "get_weather"}}
    structured = preprocessor.prepare(to_generation_request(
        _chat(tools=[WEATHER], tool_choice=named), "r")).sampling.structured
    assert structured.kind == "json_schema"
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Oslo"}}, json.loads(structured.schema))
    assert preprocessor.prepare(to_generation_request(_chat(tools=[WEATHER]), "r")).sampling.structured is None
