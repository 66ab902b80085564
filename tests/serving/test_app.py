"""The OpenAI app in this process (no Ray), where tests can hold the engine: a full queue is a 429 with
Retry-After, a failing engine a 500 or an error event (never a hang), and the protocol's finer points hold."""

import asyncio
import json
import threading

import httpx
import pytest

from vlray.engine.async_engine import AsyncEngine
from vlray.inputs.image_policy import ImagePolicy
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.llm import LLM
from vlray.serving.app import build_openai_app
from vlray.serving.chat_service import ChatService

MODEL = "tiny"


@pytest.fixture()
def llm(tiny_loaded, tiny_config):
    return LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded)


def _app(llm, **engine_args):
    loaded, config = llm.loaded, llm.config
    preprocessor = RequestPreprocessor(loaded.processor, loaded.max_model_len, config.default_max_tokens,
                                       config.max_input_pixels, image_policy=ImagePolicy.for_server())
    engine = AsyncEngine(llm.backend, llm.stats, config.max_batch_size, **engine_args)
    return build_openai_app(ChatService(preprocessor, engine, MODEL)), engine


def _call(app, *requests):
    """Send requests concurrently to the app; their responses."""
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vlray", timeout=60) as client:
            return await asyncio.gather(*[client.request(method, path, json=body) for method, path, body in requests])
    return asyncio.run(main())


def _chat(text="Hello", **extra):
    return ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra})


def _events(response):
    return [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]


def test_full_queue_is_a_429_with_retry_after(llm, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = llm.backend._run_batch

    def gated(prepared, sink=None):
        entered.set()
        release.wait(30)
        return real(prepared, sink)

    monkeypatch.setattr(llm.backend, "_run_batch", gated)
    app, engine = _app(llm, max_queued_requests=1, retry_after_s=2.5)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vlray") as client:
            running = asyncio.create_task(client.post("/v1/chat/completions", json=_chat("one")[2]))
            await asyncio.to_thread(entered.wait, 30)
            queued = asyncio.create_task(client.post("/v1/chat/completions", json=_chat("two")[2]))
            await asyncio.sleep(0.2)
            refused = await client.post("/v1/chat/completions", json=_chat("three", stream=True)[2])
            release.set()
            return refused, await running, await queued

    refused, running, queued = asyncio.run(main())
    engine.close()
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
    assert refused.json()["error"]["code"] == "queue_full" and "retry after 2.5 s" in refused.json()["error"]["message"]
    assert running.status_code == queued.status_code == 200


def test_an_engine_failure_is_a_500_or_an_error_event(llm, monkeypatch):
    real = llm.backend.runner.generate
    calls = []

    def fails_after_streaming(batch, batch_requests, sink=None):
        calls.append(1)
        if len(calls) > 2:  # the first two requests fail before any text, the third one mid-stream
            real(batch, batch_requests, sink=lambda delta: None if delta.is_final else sink(delta))
        raise RuntimeError("device lost (simulated)")

    monkeypatch.setattr(llm.backend.runner, "generate", fails_after_streaming)
    app, engine = _app(llm)
    [plain] = _call(app, _chat())
    [early] = _call(app, _chat(stream=True))
    [late] = _call(app, _chat(stream=True, max_tokens=12))
    engine.close()
    assert plain.status_code == early.status_code == 500
    assert plain.json()["error"]["type"] == "server_error" and "device lost" in plain.json()["error"]["message"]
    assert late.status_code == 200
    events = _events(late)
    assert json.loads(events[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "device lost" in json.loads(events[-1])["error"]["message"]


def test_protocol_details(llm):
    app, engine = _app(llm)
    system, developer, both_limits, usage_last, not_found, no_route, wrong_method = _call(
        app,
        ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}),
        ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [
            {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}),
        _chat(max_tokens=9, max_completion_tokens=3),
        _chat(stream=True, max_tokens=4),
        ("GET", "/v1/models/other", None),
        ("GET", "/v2/anything", None),
        ("GET", "/v1/chat/completions", None),
    )
    engine.close()
    assert developer.json()["choices"] == system.json()["choices"]  # developer is OpenAI's new name for system
    assert both_limits.json()["usage"]["completion_tokens"] <= 3
    events = _events(usage_last)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] and last["usage"]["completion_tokens"] > 0
    assert all("usage" not in json.loads(e) for e in events[:-2])  # usage on exactly one event
    for response, status in ((not_found, 404), (no_route, 404), (wrong_method, 405)):
        assert response.status_code == status and set(response.json()["error"]) == {"message", "type", "param",
                                                                                     "code"}
