"""OpenAI chat bodies <-> vlray's own request and result schema (vlray/schema.py)."""

from __future__ import annotations

from vlray.schema import GenerationRequest, GenerationResult, parse_request
from vlray.serving.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    DeltaMessage,
    Usage,
)


def to_generation_request(body: ChatCompletionRequest, request_id: str) -> GenerationRequest:
    """The engine request for a chat body (developer turns become system turns); RequestError if invalid."""
    messages = []
    for message in body.messages:
        content = message.content if isinstance(message.content, str) else [
            part.model_dump(exclude_none=True) for part in message.content]
        messages.append({"role": "system" if message.role == "developer" else message.role, "content": content})
    sampling = {name: value for name, value in (
        ("max_tokens", body.max_completion_tokens or body.max_tokens),
        ("temperature", body.temperature), ("top_p", body.top_p), ("seed", body.seed), ("stop", body.stop),
    ) if value is not None}
    return parse_request({"id": request_id, "messages": messages, **sampling})


def usage_of(num_prompt_tokens: int, num_generated_tokens: int) -> Usage:
    """OpenAI's token counts."""
    return Usage(prompt_tokens=num_prompt_tokens, completion_tokens=num_generated_tokens,
                 total_tokens=num_prompt_tokens + num_generated_tokens)


def completion(result: GenerationResult, request_id: str, model: str, created: int) -> ChatCompletion:
    """The non-streamed answer for a successful result."""
    return ChatCompletion(
        id=request_id, created=created, model=model,
        choices=[Choice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
        usage=usage_of(result.num_prompt_tokens, result.num_generated_tokens))


def chunk(request_id: str, model: str, created: int, delta: DeltaMessage | None = None,
          finish_reason: str | None = None, usage: Usage | None = None, has_choice: bool = True
          ) -> ChatCompletionChunk:
    """One streamed event; has_choice=False gives the closing usage-only chunk (stream_options.include_usage)."""
    choices = [ChunkChoice(delta=delta or DeltaMessage(), finish_reason=finish_reason)] if has_choice else []
    return ChatCompletionChunk(id=request_id, created=created, model=model, choices=choices, usage=usage)
