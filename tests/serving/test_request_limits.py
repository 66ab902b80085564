"""Bounded work per request, in the app in this process (no Ray): a body past max_request_bytes is a 413 found
while it is read; image and text limits are 400s that name the limit, before anything is decoded or tokenised;
an obviously over-context text is refused from its length alone; a request past what the service admits is a
429 in OpenAI's shape with Retry-After; and slow preprocessing of big requests does not hold up small ones."""

import asyncio
import threading
import time

import httpx
import pytest

from vlray.engine.async_engine import AsyncEngine
from vlray.inputs.image_policy import ImagePolicy
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.serving.app import build_openai_app
from vlray.serving.chat_service import ChatService
from vlray.serving.preprocess_pool import HEAVY, LIGHT, PreprocessPool
from vlray.llm import LLM

MODEL = "tiny"
OPENAI_ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def generator(tiny_loaded, tiny_config):
    return LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded)


def _app(generator, max_request_bytes=64_000, pool=None, max_admitted=None, **limits):
    loaded, config = generator.loaded, generator.config
    preprocessor = RequestPreprocessor(loaded.processor, loaded.max_model_len, config.default_max_tokens,
                                       config.max_input_pixels, image_policy=ImagePolicy.for_server(), **limits)
    engine = AsyncEngine(generator.backend, generator.stats, config.max_batch_size)
    service = ChatService(preprocessor, engine, MODEL, pool=pool, max_admitted=max_admitted, retry_after_s=1.5)
    return build_openai_app(service, max_request_bytes), service


def _body(text="Hello", **extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 3, **extra}


async def _post(app, body=None, content=None):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vlray", timeout=60) as c:
        return await c.post("/v1/chat/completions", json=body, content=content)


def _error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == OPENAI_ERROR_FIELDS and error["code"] == code
    return error["message"]


def test_a_body_over_the_limit_is_a_413_declared_or_streamed(generator):
    app, service = _app(generator, max_request_bytes=10_000)
    declared = asyncio.run(_post(app, _body("x" * 20_000)))
    assert "max_request_bytes" in _error(declared, 413, "request_too_large")

    sent = []

    async def chunks():  # no Content-Length: the limit must hold while reading, before the rest is sent
        for _ in range(100):
            sent.append(1)
            yield b"x" * 1000

    streamed = asyncio.run(_post(app, content=chunks()))
    _error(streamed, 413, "request_too_large")
    assert len(sent) < 100
    assert asyncio.run(_post(app, _body())).status_code == 200 and service.num_admitted == 0
    service.engine.close()


def test_image_and_text_limits_come_before_decoding_and_tokenising(generator, monkeypatch):
    app, service = _app(generator, max_images_per_request=2, max_request_chars=500)
    processor = service.preprocessor.processor
    monkeypatch.setattr(type(processor), "__call__", lambda *a, **k: pytest.fail("tokenised"))
    images = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@corrupt@@"}}] * 3
    many = asyncio.run(_post(app, _body([*images, {"type": "text", "text": "?"}])))
    assert "3 images, over the limit of 2 (max_images_per_request)" in _error(many, 400, "too_many_images")
    long = asyncio.run(_post(app, _body("word " * 200)))
    assert "over the limit of 500 (max_request_chars)" in _error(long, 400, "request_too_large")
    service.engine.close()


def test_an_obviously_over_context_text_is_refused_without_tokenising(generator, monkeypatch):
    app, service = _app(generator)
    preprocessor = service.preprocessor
    monkeypatch.setattr(type(preprocessor.processor), "__call__", lambda *a, **k: pytest.fail("tokenised"))
    text = "a" * (preprocessor.max_model_len * preprocessor.max_chars_per_token + 1)
    body = _body(text)
    app_big, service_big = _app(generator, max_request_bytes=len(text) + 1000)
    answer = asyncio.run(_post(app_big, body))
    assert "over the model's context" in _error(answer, 400, "context_length_exceeded")
    service.engine.close()
    service_big.engine.close()


def test_past_what_the_service_admits_is_a_429_in_openai_shape(generator, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    app, service = _app(generator, max_admitted=1)
    real = service.preprocessor.prepare

    def gated(request):
        entered.set()
        release.wait(30)
        return real(request)

    monkeypatch.setattr(service.preprocessor, "prepare", gated)

    async def main():
        first = asyncio.create_task(_post(app, _body()))
        await asyncio.to_thread(entered.wait, 30)
        refused = await _post(app, _body(stream=True))
        release.set()
        return refused, await first

    refused, first = asyncio.run(main())
    assert "retry after 1.5 s" in _error(refused, 429, "server_busy")
    assert refused.json()["error"]["type"] == "rate_limit_error" and refused.headers["retry-after"] == "2"
    assert first.status_code == 200 and service.num_admitted == 0
    service.engine.close()


def test_big_requests_in_preprocessing_do_not_hold_up_a_small_one(generator, monkeypatch):
    # Slow big texts fill their lane (six of them filled all asyncio.to_thread had on a 2-CPU machine, the
    # issue's case); the small request must still go through its own lane.
    app, service = _app(generator, pool=PreprocessPool(num_cpus=2), max_request_bytes=1 << 20)
    release = threading.Event()
    real = service.preprocessor.prepare

    def slow_when_big(request):
        if len(request.messages[0].content) > 10_000:
            release.wait(30)
        return real(request)

    monkeypatch.setattr(service.preprocessor, "prepare", slow_when_big)
    big = _body("word " * 4000)
    assert PreprocessPool.lane_of(service_request(big)) == HEAVY
    assert PreprocessPool.lane_of(service_request(_body())) == LIGHT

    async def main():
        stuck = [asyncio.create_task(_post(app, big)) for _ in range(8)]
        await asyncio.sleep(0.3)
        start = time.monotonic()
        small = await _post(app, _body())
        waited = time.monotonic() - start
        release.set()
        return small, waited, await asyncio.gather(*stuck)

    small, waited, stuck = asyncio.run(main())
    assert small.status_code == 200 and waited < 5
    assert all(r.status_code == 400 for r in stuck)  # over the tiny model's context, once let through
    service.engine.close()


def service_request(body):
    from vlray.schema import parse_request
    return parse_request({"id": "x", "messages": body["messages"]})
