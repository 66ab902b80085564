"""The OpenAI chat and text completion API over one AsyncEngine: parse and check a body, preprocess it off the
event loop, then answer it whole or as server-sent events. No web framework here: vlray/serving/app.py puts it
on HTTP."""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

from functools import lru_cache

from pydantic import BaseModel, ValidationError

from vlray.engine.async_engine import AsyncEngine, GenerationError
from vlray.engine.request_queue import QueueFullError
from vlray.engine.sampling.parallel_sampling import expand_samples
from vlray.engine.token_stream import StreamDelta
from vlray.engine.token_text import token_pieces
from vlray.inputs.prepared_request import PreparedRequest
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.schema import GenerationRequest, GenerationResult, RequestError
from vlray.serving.errors import APIError, error_from_request, error_from_validation
from vlray.serving.mapping import (
    completion,
    text_completion,
    to_completion_request,
    to_generation_request,
)
from vlray.serving.preprocess_pool import PreprocessPool
from vlray.serving.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    TextCompletion,
)
from vlray.serving.sample_streams import close_all, gather_or_cancel, merge_samples
from vlray.serving.stream_events import ChatEvents, TextEvents

class ChatService:
    """`/v1/chat/completions`, `/v1/completions` and `/v1/models` for one served model."""

    def __init__(self, preprocessor: RequestPreprocessor, engine: AsyncEngine, model_name: str,
                 pool: PreprocessPool | None = None, max_admitted: int | None = None,
                 retry_after_s: float = 2.0) -> None:
        """`max_admitted`: requests the service holds at once (reading, preprocessing, queued, generating); past
        it a request is answered 429 at once. None: no bound here (the engine's queue still has one)."""
        self.preprocessor = preprocessor
        self.engine = engine
        self.model_name = model_name
        self.created = int(time.time())
        self.pool = pool or PreprocessPool(os.cpu_count() or 1)
        self.max_admitted = max_admitted
        self.retry_after_s = retry_after_s
        self.num_admitted = 0
        tokenizer = preprocessor.processor.tokenizer
        # A token as logprobs show it: its text as decode([id]) gives it, as vLLM does (a token holding part of a
        # character decodes to U+FFFD), and the bytes it stands for.
        self.token_text = lru_cache(maxsize=1 << 16)(lambda token_id: token_pieces(tokenizer, [token_id])[0])

    def admit(self) -> None:
        """Take one of the service's places for a request's whole life (give it back with `release`), or refuse
        it with a 429 in OpenAI's shape. The event loop is single-threaded: the count needs no lock."""
        if self.max_admitted is not None and self.num_admitted >= self.max_admitted:
            raise APIError(429, f"the server is busy: {self.num_admitted} requests are in progress; retry after "
                           f"{self.retry_after_s:g} s", type="rate_limit_error", code="server_busy",
                           headers={"Retry-After": str(max(1, math.ceil(self.retry_after_s)))})
        self.num_admitted += 1

    def release(self) -> None:
        self.num_admitted -= 1

    def parse(self, body: bytes) -> ChatCompletionRequest:
        """The chat request in a raw body; APIError 400 when it is not JSON or not a valid request."""
        return _parse(ChatCompletionRequest, body)

    def parse_completion(self, body: bytes) -> CompletionRequest:
        """The /v1/completions request in a raw body; APIError 400 as for chat."""
        return _parse(CompletionRequest, body)

    async def complete(self, request: ChatCompletionRequest | CompletionRequest) -> ChatCompletion | TextCompletion:
        """The whole answer, one choice per sample."""
        request_id, samples = await self._prepare(request)
        try:
            results = await gather_or_cancel([self.engine.generate(p) for p in samples])
        except QueueFullError as exc:
            raise _busy(exc) from None
        for result in results:
            if not result.ok:
                raise _failed(result)
        created = int(time.time())
        if isinstance(request, ChatCompletionRequest):
            return completion(request, results, request_id, self.model_name, created, self.token_text)
        return text_completion(results, request_id, self.model_name, created, self.token_text)

    async def open_stream(self, request: ChatCompletionRequest | CompletionRequest) -> AsyncIterator[str]:
        """Server-sent events of the answer, its samples merged by choice index. Waits for each sample's first
        text, so that a request that cannot start (bad input, full queue, failed generation) still gets an HTTP
        error instead of an event stream."""
        request_id, samples = await self._prepare(request)
        streams = [self.engine.stream(p) for p in samples]
        try:
            firsts = await gather_or_cancel([anext(s) for s in streams])
        except QueueFullError as exc:
            await close_all(streams)
            raise _busy(exc) from None
        except GenerationError as exc:
            await close_all(streams)
            raise _failed(exc.result) from None
        events = (ChatEvents if isinstance(request, ChatCompletionRequest) else TextEvents)(
            request, request_id, self.model_name, int(time.time()), self.token_text)
        return self._events(events, firsts, streams)

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.model_name, created=self.created,
                                         max_model_len=self.preprocessor.max_model_len)])

    async def _prepare(self, request: ChatCompletionRequest | CompletionRequest
                       ) -> tuple[str, list[PreparedRequest]]:
        """The request's id and its samples, preprocessed once (n > 1: expanded after preprocessing)."""
        if request.model != self.model_name:
            raise APIError(404, f"the model `{request.model}` does not exist here; this server serves "
                           f"`{self.model_name}` (see /v1/models)", param="model", code="model_not_found")
        is_chat = isinstance(request, ChatCompletionRequest)
        request_id = f"{'chatcmpl' if is_chat else 'cmpl'}-{uuid.uuid4().hex}"
        try:
            generation: GenerationRequest = (to_generation_request if is_chat else to_completion_request)(
                request, request_id)  # type: ignore[arg-type]
            # Image decoding, fetching and tokenizing take a while: off the event loop, in the request's lane.
            prepared = await self.pool.run(generation, self.preprocessor.prepare)
        except RequestError as exc:
            raise error_from_request(exc, _param_of(exc, request)) from None
        return request_id, [prepared] if request.n == 1 else expand_samples(prepared, request.n)

    async def _events(self, events: "ChatEvents | TextEvents", firsts: list[StreamDelta],
                      streams: list[AsyncGenerator[StreamDelta, None]]) -> AsyncIterator[str]:
        try:
            for body in events.opening(len(streams)):
                yield body
            async for index, delta in merge_samples(firsts, streams):
                for body in events.on_delta(index, delta):
                    yield body
            for body in events.closing():
                yield body
            yield "data: [DONE]\n\n"
        except GenerationError as exc:
            yield f"data: {json.dumps(_failed(exc.result).body())}\n\n"  # OpenAI's clients raise on it
        finally:
            await close_all(streams)


def _param_of(exc: RequestError, request: ChatCompletionRequest | CompletionRequest) -> str:
    """The field a refused request is named by: the JSON format the engine could not compile (a forced tool
    call's comes from the tools' parameters), else the input."""
    if "response_format" in str(exc):
        return "tools" if isinstance(request, ChatCompletionRequest) and request.forces_tool_call else \
            "response_format"
    return "messages" if isinstance(request, ChatCompletionRequest) else "prompt"


def _parse(model: type[BaseModel], body: bytes):
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise error_from_validation(exc) from None


def _busy(exc: QueueFullError) -> APIError:
    return APIError(429, str(exc), type="rate_limit_error", code="queue_full",
                    headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})


def _failed(result: GenerationResult) -> APIError:
    return APIError(500, f"generation failed: {result.error}", type="server_error", code=result.error_kind)
