"""The server-sent events of a streamed answer, choice by choice: chat chunks (text, tool-call deltas, logprobs)
and text-completion chunks. Each class turns (choice index, StreamDelta) into `data: ...` lines; the service
feeds it the merged samples and sends what it returns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vlray.engine.token_stream import StreamDelta
from vlray.serving.mapping import TokenText, chat_logprobs, chunk, completion_logprobs, openai_call, usage_of
from vlray.serving.protocol import (
    ChatCompletionRequest,
    CompletionChoice,
    CompletionRequest,
    DeltaMessage,
    FunctionCallDelta,
    TextCompletion,
    ToolCallDelta,
    Usage,
)
from vlray.serving.tool_parser import ParsedToolCall, ToolCallStream, parse_forced_calls


def _sse(body: Any) -> str:
    return f"data: {body.model_dump_json(exclude_none=True)}\n\n"


class _Samples:
    """Counts a request's samples as they finish. Usage (the prompt once, the completions of all samples) goes
    on exactly one event: OpenAI's closing usage-only chunk when the client asks for it, else on the finishing
    event of the last sample to finish."""

    def __init__(self, include_usage_chunk: bool) -> None:
        self.include_usage_chunk = include_usage_chunk
        self.num_samples = 0
        self.num_prompt_tokens = 0
        self.num_generated_tokens = 0
        self.num_finished = 0

    def finished(self, delta: StreamDelta) -> Usage | None:
        """Record a sample's last delta; the usage to put on its event (None: not this one)."""
        self.num_finished += 1
        self.num_prompt_tokens = delta.num_prompt_tokens
        self.num_generated_tokens += delta.num_generated_tokens
        is_last = self.num_finished == self.num_samples
        return self.usage if is_last and not self.include_usage_chunk else None

    @property
    def usage(self) -> Usage:
        return usage_of(self.num_prompt_tokens, self.num_generated_tokens)


class ChatEvents:
    """chat.completion.chunk events. With tools, text from a `<tool_call>` on is held until its `</tool_call>`
    and then sent as one tool-call delta (id, name, arguments); with a forced call (JSON only) the whole answer is
    held and sent as calls at the end."""

    def __init__(self, request: ChatCompletionRequest, request_id: str, model: str, created: int,
                 token_text: TokenText) -> None:
        self.request, self.request_id, self.model, self.created = request, request_id, model, created
        self.token_text = token_text
        self.samples = _Samples(request.include_usage_chunk)
        self._parsers: dict[int, ToolCallStream] = {}
        self._forced_text: dict[int, str] = {}
        self._num_calls: dict[int, int] = {}

    def _event(self, **fields: Any) -> str:
        return _sse(chunk(self.request_id, self.model, self.created, **fields))

    def opening(self, n: int) -> Iterator[str]:
        self.samples.num_samples = n
        for index in range(n):
            if self.request.parses_tool_calls and not self.request.forces_tool_call:
                self._parsers[index] = ToolCallStream()
            self._forced_text[index] = ""
            self._num_calls[index] = 0
            yield self._event(index=index, delta=DeltaMessage(role="assistant", content=""))

    def on_delta(self, index: int, delta: StreamDelta) -> Iterator[str]:
        logprobs = chat_logprobs(delta.logprobs, self.token_text) if self.request.logprobs else None
        content, calls = self._split(index, delta.text, delta.is_final)
        if content or calls or (logprobs is not None and logprobs.content):
            yield self._event(index=index, logprobs=logprobs, delta=DeltaMessage(
                content=content or None, tool_calls=self._call_deltas(index, calls) or None))
        if delta.is_final:
            reason = "tool_calls" if self._num_calls[index] else delta.finish_reason
            yield self._event(index=index, finish_reason=reason, usage=self.samples.finished(delta))

    def closing(self) -> Iterator[str]:
        if self.samples.include_usage_chunk:
            yield self._event(usage=self.samples.usage, has_choice=False)

    def _split(self, index: int, text: str, is_final: bool) -> tuple[str, list[ParsedToolCall]]:
        if self.request.forces_tool_call:
            self._forced_text[index] += text
            if not is_final:
                return "", []
            content, calls = parse_forced_calls(self._forced_text[index])
            return content or "", calls
        parser = self._parsers.get(index)
        if parser is None:
            return text, []
        piece = parser.push(text)
        if is_final:
            rest = parser.finish()
            piece.content += rest.content
        return piece.content, piece.calls

    def _call_deltas(self, index: int, calls: list[ParsedToolCall]) -> list[ToolCallDelta]:
        out = []
        for call in calls:
            full = openai_call(call)
            out.append(ToolCallDelta(index=self._num_calls[index], id=full.id, type="function",
                                     function=FunctionCallDelta(name=full.function.name,
                                                                arguments=full.function.arguments)))
            self._num_calls[index] += 1
        return out


class TextEvents:
    """text_completion events: each choice's text and (legacy) logprobs as they come."""

    def __init__(self, request: CompletionRequest, request_id: str, model: str, created: int,
                 token_text: TokenText) -> None:
        self.request, self.request_id, self.model, self.created = request, request_id, model, created
        self.token_text = token_text
        self.samples = _Samples(request.include_usage_chunk)

    def _event(self, choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return _sse(TextCompletion(id=self.request_id, created=self.created, model=self.model, choices=choices,
                                   usage=usage))

    def opening(self, n: int) -> Iterator[str]:
        self.samples.num_samples = n
        return iter(())

    def on_delta(self, index: int, delta: StreamDelta) -> Iterator[str]:
        logprobs = None
        if self.request.logprobs is not None:
            logprobs = completion_logprobs(delta.logprobs, self.token_text, delta.text_offset)
        usage = self.samples.finished(delta) if delta.is_final else None
        yield self._event([CompletionChoice(index=index, text=delta.text, finish_reason=delta.finish_reason,
                                            logprobs=logprobs)], usage)

    def closing(self) -> Iterator[str]:
        if self.samples.include_usage_chunk:
            yield self._event([], usage=self.samples.usage)
