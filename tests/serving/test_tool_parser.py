"""Qwen's <tool_call> blocks parsed from whole answers and from streamed text split anywhere."""

import json
import re

import pytest

from vlray.serving.tool_parser import ToolCallStream, parse_forced_calls, parse_tool_calls

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'


def test_a_call_and_the_text_around_it():
    content, calls = parse_tool_calls("Let me check." + "\n" + CALL)
    assert content == "Let me check.\n"
    [call] = calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris", "unit": "c"}
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)


def test_only_calls_give_no_content_and_two_calls_two_ids():
    content, calls = parse_tool_calls(CALL + "\n" + CALL.replace("Paris", "Rome"))
    assert content is None and [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert calls[0].id != calls[1].id


def test_no_tags_is_all_content():
    assert parse_tool_calls("Just text, a < sign and <tool") == ("Just text, a < sign and <tool", [])


@pytest.mark.parametrize("bad", [
    '<tool_call>\n{"name": "f", "arguments": {oops}\n</tool_call>',    # not JSON
    '<tool_call>\n["f"]\n</tool_call>',                                  # JSON, not a call
    '<tool_call>\n{"arguments": {}}\n</tool_call>',                      # no name
    '<tool_call>\n{"name": "f", "arguments": "{not json"}\n</tool_call>',  # arguments text that is not JSON
    '<tool_call>\n{"name": "f", "arguments": {}}',                       # never closed
])
def test_a_bad_block_stays_content_as_written(bad):
    assert parse_tool_calls("Before " + bad) == ("Before " + bad, [])


def test_arguments_given_as_json_text_are_kept():
    [call] = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>')[1]
    assert json.loads(call.arguments) == {"x": 1}


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 64])
def test_streamed_in_pieces_of_any_size_gives_the_whole_answers_parse(size):
    text = "Sure <b>bold</b> <tool_ then " + CALL + "\nand after " + CALL + " done <tool_c"
    stream = ToolCallStream()
    pieces = [stream.push(text[i:i + size]) for i in range(0, len(text), size)] + [stream.finish()]
    content = "".join(p.content for p in pieces)
    names = [c.name for p in pieces for c in p.calls]
    whole_content, whole_calls = parse_tool_calls(text)
    assert content == whole_content == "Sure <b>bold</b> <tool_ then and after  done <tool_c"
    assert names == [c.name for c in whole_calls] == ["get_weather", "get_weather"]


def test_text_is_held_only_while_it_may_be_a_tag():
    stream = ToolCallStream()
    assert stream.push("Hello <tool").content == "Hello "
    assert stream.push("box> x").content == "<toolbox> x"
    assert stream.push(" <tool_call>{\"name\": ").content == " "
    piece = stream.push('"f", "arguments": {}}</tool_call>')
    assert piece.content == "" and [c.name for c in piece.calls] == ["f"]


def test_forced_calls_are_bare_json():
    content, calls = parse_forced_calls('[{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]')
    assert content is None and [c.name for c in calls] == ["f", "g"]
    content, [call] = parse_forced_calls('{"name": "f", "arguments": {"a": 1}}')
    assert content is None and json.loads(call.arguments) == {"a": 1}
    assert parse_forced_calls('{"truncated": ') == ('{"truncated": ', [])
    assert parse_forced_calls("[]") == ("[]", [])

