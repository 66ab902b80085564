"""OpenAI bodies <-> vlray's own request and result schema (vlray/schema.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vlray.schema import GenerationRequest, GenerationResult, parse_request
from vlray.serving.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    DeltaMessage,
    FunctionCall,
    NamedToolChoice,
    SamplingFields,
    TextCompletion,
    TokenLogprobOut,
    ToolCall,
    TopLogprob,
    Usage,
)
from vlray.serving.tool_parser import ParsedToolCall, parse_forced_calls, parse_tool_calls

_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                    "repetition_penalty", "seed", "stop")

TokenText = Callable[[int], tuple[str, bytes]]
"""A token id's text and bytes, as logprobs show them."""


def _sampling(body: SamplingFields) -> dict[str, Any]:
    """The sampling fields the client set (unset ones take the engine's defaults); top_k -1 is vLLM's off, 0 ours."""
    out = {name: getattr(body, name) for name in _SAMPLING_FIELDS if getattr(body, name) is not None}
    if out.get("top_k") == -1:
        out["top_k"] = 0
    return out


def to_generation_request(body: ChatCompletionRequest, request_id: str) -> GenerationRequest:
    """The engine request for a chat body (developer turns become system turns); RequestError if invalid."""
    messages = []
    for message in body.messages:
        content = message.content if message.content is None or isinstance(message.content, str) else [
            part.model_dump(exclude_none=True) for part in message.content]
        turn: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": content}
        if message.tool_calls:
            turn["tool_calls"] = [call.model_dump() for call in message.tool_calls]
        if message.tool_call_id is not None:
            turn["tool_call_id"] = message.tool_call_id
        messages.append(turn)
    fields: dict[str, Any] = {"id": request_id, "messages": messages, **_sampling(body)}
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        fields["max_tokens"] = max_tokens
    if body.logprobs:
        fields["logprobs"] = body.top_logprobs or 0
    if body.tools and body.tool_choice != "none":  # none: the model is not told about the tools at all
        fields["tools"] = [tool.model_dump(exclude_none=True) for tool in body.tools]
    if body.forces_tool_call:
        fields["response_format"] = tool_call_format(body)
    elif body.response_format is not None and body.response_format.type != "text":
        fields["response_format"] = body.response_format.model_dump(exclude_none=True, by_alias=True)
    return parse_request(fields)


def to_completion_request(body: CompletionRequest, request_id: str) -> GenerationRequest:
    """The engine request for a /v1/completions body: the prompt as it is, no chat template."""
    fields: dict[str, Any] = {"id": request_id, "prompt": body.prompt_text, "chat_template": False,
                              **_sampling(body)}
    if body.max_tokens is not None:
        fields["max_tokens"] = body.max_tokens
    if body.logprobs is not None:
        fields["logprobs"] = body.logprobs
    return parse_request(fields)


def tool_call_format(body: ChatCompletionRequest) -> dict[str, Any]:
    """response_format (json_schema) that makes the output a tool call: one call of the named function, or for
    `required` an array of calls of any of the tools (one call at most when parallel_tool_calls is false), as
    vLLM builds it. Qwen's <tool_call> tags are left out: the grammar makes JSON, and the parser reads it whole."""
    def call_schema(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
        return {"type": "object", "properties": {"name": {"type": "string", "enum": [name]},
                                                 "arguments": parameters or {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": False}

    tools = {tool.function.name: tool.function.parameters for tool in body.tools or []}
    if isinstance(body.tool_choice, NamedToolChoice):
        name = body.tool_choice.function.name
        schema = call_schema(name, tools[name])
    else:
        schema = {"type": "array", "minItems": 1,
                  "items": {"anyOf": [call_schema(name, parameters) for name, parameters in tools.items()]}}
        if body.parallel_tool_calls is False:
            schema["maxItems"] = 1
    return {"type": "json_schema", "json_schema": {"name": "tool_calls", "schema": schema, "strict": True}}


def assistant_message(body: ChatCompletionRequest, text: str) -> tuple[AssistantMessage, bool]:
    """The answer's message, its tool calls parsed out where the request gave tools; and whether it calls any."""
    if not body.parses_tool_calls:
        return AssistantMessage(content=text), False
    content, calls = (parse_forced_calls if body.forces_tool_call else parse_tool_calls)(text)
    if not calls:
        return AssistantMessage(content=text), False
    return AssistantMessage(content=content, tool_calls=[openai_call(c) for c in calls]), True


def openai_call(call: ParsedToolCall) -> ToolCall:
    return ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))


def usage_of(num_prompt_tokens: int, num_generated_tokens: int) -> Usage:
    """OpenAI's token counts."""
    return Usage(prompt_tokens=num_prompt_tokens, completion_tokens=num_generated_tokens,
                 total_tokens=num_prompt_tokens + num_generated_tokens)


def usage_of_samples(results: Sequence[Any]) -> Usage:
    """n samples of one prompt: the prompt counted once, the completions of all of them."""
    return usage_of(results[0].num_prompt_tokens, sum(r.num_generated_tokens for r in results))


def json_logprob(logprob: float) -> float:
    """-inf (a token the filters removed) is not JSON: OpenAI and vLLM send -9999 for it."""
    return max(logprob, -9999.0)


def chat_logprobs(logprobs: Sequence[Any] | None, token_text: TokenText) -> ChoiceLogprobs | None:
    """OpenAI's chat logprobs for the engine's TokenLogprobs (token_id, logprob, top)."""
    if logprobs is None:
        return None
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text, raw = token_text(token_id)
        return {"token": text, "logprob": json_logprob(logprob), "bytes": list(raw)}
    return ChoiceLogprobs(content=[
        TokenLogprobOut(**entry(lp.token_id, lp.logprob),
                        top_logprobs=[TopLogprob(**entry(tid, value)) for tid, value in lp.top])
        for lp in logprobs])


def completion_logprobs(logprobs: Sequence[Any] | None, token_text: TokenText, text_offset: int = 0
                        ) -> CompletionLogprobs | None:
    """The legacy shape: tokens, token_logprobs, top_logprobs (token -> logprob) and text offsets."""
    if logprobs is None:
        return None
    out = CompletionLogprobs()
    for lp in logprobs:
        token = token_text(lp.token_id)[0]
        out.tokens.append(token)
        out.token_logprobs.append(json_logprob(lp.logprob))
        out.top_logprobs.append({token_text(tid)[0]: json_logprob(value) for tid, value in lp.top})
        out.text_offset.append(text_offset)
        text_offset += len(token)
    return out


def completion(body: ChatCompletionRequest, results: Sequence[GenerationResult], request_id: str, model: str,
               created: int, token_text: TokenText) -> ChatCompletion:
    """The non-streamed answer for successful results, one choice per sample."""
    choices = []
    for index, result in enumerate(results):
        message, calls_tools = assistant_message(body, result.text)
        choices.append(Choice(index=index, message=message,
                              finish_reason="tool_calls" if calls_tools else result.finish_reason,
                              logprobs=chat_logprobs(result.logprobs, token_text)))
    return ChatCompletion(id=request_id, created=created, model=model, choices=choices,
                          usage=usage_of_samples(results))


def text_completion(results: Sequence[GenerationResult], request_id: str, model: str, created: int,
                    token_text: TokenText) -> TextCompletion:
    """The non-streamed /v1/completions answer, one choice per sample."""
    return TextCompletion(id=request_id, created=created, model=model, choices=[
        CompletionChoice(index=i, text=r.text, finish_reason=r.finish_reason,
                         logprobs=completion_logprobs(r.logprobs, token_text))
        for i, r in enumerate(results)], usage=usage_of_samples(results))


def chunk(request_id: str, model: str, created: int, delta: DeltaMessage | None = None,
          finish_reason: str | None = None, usage: Usage | None = None, has_choice: bool = True, index: int = 0,
          logprobs: ChoiceLogprobs | None = None) -> ChatCompletionChunk:
    """One streamed event; has_choice=False gives the closing usage-only chunk (stream_options.include_usage)."""
    choices = [ChunkChoice(index=index, delta=delta or DeltaMessage(), finish_reason=finish_reason,
                           logprobs=logprobs)] if has_choice else []
    return ChatCompletionChunk(id=request_id, created=created, model=model, choices=choices, usage=usage)
