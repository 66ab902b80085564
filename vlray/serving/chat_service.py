"""The OpenAI chat API over one AsyncEngine: parse and check a body, preprocess it off the event loop, then
answer it whole or as server-sent events. No web framework here: vlray/serving/app.py puts it on HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

from pydantic import ValidationError

from vlray.engine.async_engine import AsyncEngine, GenerationError
from vlray.engine.request_queue import QueueFullError
from vlray.engine.token_stream import StreamDelta
from vlray.inputs.prepared_request import PreparedRequest
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.schema import GenerationResult, RequestError
from vlray.serving.errors import APIError, error_from_request, error_from_validation
from vlray.serving.mapping import chunk, completion, to_generation_request, usage_of
from vlray.serving.protocol import ChatCompletion, ChatCompletionRequest, DeltaMessage, ModelCard, ModelList


class ChatService:
    """`/v1/chat/completions` and `/v1/models` for one served model."""

    def __init__(self, preprocessor: RequestPreprocessor, engine: AsyncEngine, model_name: str) -> None:
        self.preprocessor = preprocessor
        self.engine = engine
        self.model_name = model_name
        self.created = int(time.time())

    def parse(self, body: bytes) -> ChatCompletionRequest:
        """The request in a raw body; APIError 400 when it is not JSON or not a valid request."""
        try:
            return ChatCompletionRequest.model_validate_json(body)
        except ValidationError as exc:
            raise error_from_validation(exc) from None

    async def complete(self, request: ChatCompletionRequest) -> ChatCompletion:
        """The whole answer."""
        request_id, prepared = await self._prepare(request)
        try:
            result = await self.engine.generate(prepared)
        except QueueFullError as exc:
            raise _busy(exc) from None
        if not result.ok:
            raise _failed(result)
        return completion(result, request_id, self.model_name, int(time.time()))

    async def open_stream(self, request: ChatCompletionRequest) -> AsyncIterator[str]:
        """Server-sent events of the answer. Waits for the first text, so that a request that cannot start
        (bad input, full queue, failed generation) still gets an HTTP error instead of an event stream."""
        request_id, prepared = await self._prepare(request)
        deltas = self.engine.stream(prepared)
        try:
            first = await anext(deltas)
        except QueueFullError as exc:
            raise _busy(exc) from None
        except GenerationError as exc:
            raise _failed(exc.result) from None
        return self._events(request, request_id, first, deltas)

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.model_name, created=self.created,
                                         max_model_len=self.preprocessor.max_model_len)])

    async def _prepare(self, request: ChatCompletionRequest) -> tuple[str, PreparedRequest]:
        if request.model != self.model_name:
            raise APIError(404, f"the model `{request.model}` does not exist here; this server serves "
                           f"`{self.model_name}` (see /v1/models)", param="model", code="model_not_found")
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        try:
            # Image decoding, fetching and tokenizing take a while: off the event loop, so other requests go on.
            return request_id, await asyncio.to_thread(
                self.preprocessor.prepare, to_generation_request(request, request_id))
        except RequestError as exc:
            raise error_from_request(exc) from None

    async def _events(self, request: ChatCompletionRequest, request_id: str, first: StreamDelta,
                      deltas: AsyncGenerator[StreamDelta, None]) -> AsyncIterator[str]:
        created = int(time.time())

        def event(**fields) -> str:
            body = chunk(request_id, self.model_name, created, **fields).model_dump_json(exclude_none=True)
            return f"data: {body}\n\n"

        try:
            yield event(delta=DeltaMessage(role="assistant", content=""))
            delta = first
            while True:
                if delta.text:
                    yield event(delta=DeltaMessage(content=delta.text))
                if delta.is_final:
                    break
                delta = await anext(deltas)
            counts = usage_of(delta.num_prompt_tokens, delta.num_generated_tokens)
            # Usage goes on exactly one event: OpenAI's closing usage-only chunk when asked for, else the last.
            yield event(finish_reason=delta.finish_reason, usage=None if request.include_usage_chunk else counts)
            if request.include_usage_chunk:
                yield event(usage=counts, has_choice=False)
            yield "data: [DONE]\n\n"
        except GenerationError as exc:
            yield f"data: {json.dumps(_failed(exc.result).body())}\n\n"  # OpenAI's clients raise on it
        finally:
            await deltas.aclose()


def _busy(exc: QueueFullError) -> APIError:
    return APIError(429, str(exc), type="rate_limit_error", code="queue_full",
                    headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})


def _failed(result: GenerationResult) -> APIError:
    return APIError(500, f"generation failed: {result.error}", type="server_error", code=result.error_kind)
