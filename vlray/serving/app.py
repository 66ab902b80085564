"""The HTTP face of ChatService: a FastAPI app with OpenAI's routes and OpenAI-shaped errors everywhere.

Bodies are parsed by ChatService, not by FastAPI, so that a malformed body is a 400 in OpenAI's error shape
(FastAPI would answer 422 in its own). Any other failure is a 500 in the same shape, and the server goes on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from vlray.serving.chat_service import ChatService
from vlray.serving.errors import APIError
from vlray.serving.server_config import DEFAULT_MAX_REQUEST_BYTES

log = logging.getLogger(__name__)


def build_openai_app(service: ChatService, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{id}, GET /health.
    A body over max_request_bytes is a 413, found while it is read (Ray Serve's proxy sets no limit of its own)."""
    app = FastAPI(title="vlray", summary="OpenAI-compatible Qwen3-VL chat", docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Unknown routes (404) and wrong methods (405).
        return await api_error(request, APIError(exc.status_code, str(exc.detail), code=f"http_{exc.status_code}"))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return await api_error(request, APIError(500, f"internal error: {exc}", type="server_error"))

    async def answer(request: Request, parse: Callable[[bytes], Any]) -> Response:
        service.admit()  # before the body is read: a flood of large bodies is bounded too
        streaming = False
        try:
            body = parse(await read_body(request, max_request_bytes))
            if body.stream:
                events = await service.open_stream(body)
                streaming = True
                return StreamingResponse(_then(events, service.release), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            return JSONResponse((await service.complete(body)).model_dump(mode="json"))
        finally:
            if not streaming:
                service.release()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await answer(request, service.parse)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        """Prompt text as it is, no chat template (for clients that still use the legacy API)."""
        return await answer(request, service.parse_completion)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(service.models().model_dump(mode="json"))

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> JSONResponse:
        cards = [card for card in service.models().data if card.id == model_id]
        if not cards:
            raise APIError(404, f"the model `{model_id}` does not exist here", param="model", code="model_not_found")
        return JSONResponse(cards[0].model_dump(mode="json"))

    @app.get("/health")
    async def health() -> JSONResponse:
        engine = service.engine
        status = {"status": "ok" if engine.is_alive else "engine stopped", "model": service.model_name,
                  "num_running": engine.num_running, "num_queued": engine.num_queued}
        return JSONResponse(status, status_code=200 if engine.is_alive else 503)

    return app


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, read as it arrives and refused (413) as soon as it passes max_bytes, declared or not."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(piece)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> APIError:
    return APIError(413, f"the request body is over the limit of {max_bytes} bytes (max_request_bytes)",
                    code="request_too_large")


async def _then(events: AsyncIterator[str], done: Callable[[], None]) -> AsyncIterator[str]:
    """The events, then done() however the stream ends (finished, failed or the client gone)."""
    try:
        async for event in events:
            yield event
    finally:
        done()
