"""Qwen's tool calls in the model's text: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` blocks
become OpenAI tool calls, text outside them stays content. A block whose JSON does not parse (or is not a call)
stays in the content as the model wrote it: the client sees what came out, and the server never fails on it.

`ToolCallStream` does the same on streamed text: text that may be the start of `<tool_call>` is held back until
it is known not to be, a block is held until its `</tool_call>`, then goes out as one OpenAI tool-call delta."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

CALL_START, CALL_END = "<tool_call>", "</tool_call>"


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    """One call: OpenAI's id, the function's name and its arguments as JSON text."""

    id: str
    name: str
    arguments: str


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_call(body: str) -> ParsedToolCall | None:
    """The call a block's JSON holds ({"name": str, "arguments": object or JSON text}); None when it is not one."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return call_of(value)


def call_of(value: Any) -> ParsedToolCall | None:
    """A decoded {"name", "arguments"} object as a call (arguments kept as JSON text); None when it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except ValueError:
            return None
    else:
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ParsedToolCall(new_call_id(), value["name"], arguments)


def parse_tool_calls(text: str) -> tuple[str | None, list[ParsedToolCall]]:
    """(content, calls) of a whole answer; content None when the answer is only calls."""
    stream = ToolCallStream()
    pieces = [stream.push(text), stream.finish()]
    content = "".join(p.content for p in pieces)
    calls = [c for p in pieces for c in p.calls]
    return (content if content.strip() or not calls else None), calls


def parse_forced_calls(text: str) -> tuple[str | None, list[ParsedToolCall]]:
    """The answer to a request whose output was constrained to a call (tool_choice required or named): a JSON
    call object, or an array of them; text that is neither stays content."""
    try:
        value = json.loads(text)
    except ValueError:
        return parse_tool_calls(text)
    calls = [call_of(v) for v in (value if isinstance(value, list) else [value])]
    if not calls or any(c is None for c in calls):
        return text, []
    return None, calls  # type: ignore[return-value]


@dataclass(slots=True)
class ToolCallPiece:
    """What one push releases: content text, and the calls completed by it."""

    content: str = ""
    calls: list[ParsedToolCall] = field(default_factory=list)


class ToolCallStream:
    """Streamed text in, content and completed calls out, in order."""

    def __init__(self) -> None:
        self._held = ""  # text not released yet: a possible tag start, or an open block
        self._in_call = False
        self._after_call = False  # newlines right after a call are not content (Qwen puts one between blocks)

    def push(self, text: str) -> ToolCallPiece:
        self._held += text
        out = ToolCallPiece()
        while True:
            if self._after_call and self._held:
                self._held = self._held.lstrip("\n")
                self._after_call = not self._held
            if self._in_call:
                end = self._held.find(CALL_END)
                if end < 0:
                    return out
                body, self._held = self._held[:end], self._held[end + len(CALL_END):]
                self._in_call = False
                call = parse_call(body.strip())
                if call is None:
                    out.content += CALL_START + body + CALL_END  # not a call: the text as the model wrote it
                else:
                    out.calls.append(call)
                    self._after_call = True
                continue
            start = self._held.find(CALL_START)
            if start >= 0:
                out.content += self._held[:start]
                self._held = self._held[start + len(CALL_START):]
                self._in_call = True
                continue
            keep = _partial_tag_length(self._held)
            out.content += self._held[:len(self._held) - keep]
            self._held = self._held[len(self._held) - keep:]
            return out

    def finish(self) -> ToolCallPiece:
        """The end of the answer: whatever is held goes out as content (an unclosed block included)."""
        held = (CALL_START if self._in_call else "") + self._held
        self._held, self._in_call = "", False
        return ToolCallPiece(content=held)


def _partial_tag_length(text: str) -> int:
    """Characters at the end of text that could begin `<tool_call>`."""
    for n in range(min(len(text), len(CALL_START) - 1), 0, -1):
        if CALL_START.startswith(text[-n:]):
            return n
    return 0
