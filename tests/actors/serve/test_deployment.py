"""The Serve app on 127.0.0.1, through the official `openai` client: image and text chats give the engine's
own greedy answers, streaming gives the same text, 16 concurrent requests are all answered, and every bad
input is a 400 (never a 500) after which the server goes on answering."""

import base64
import io
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from actors.serve.deployment import run_local
from vlray.serving.server_config import ServerConfig
from vlray.llm import LLM
from vlray.testing.sample_images import make_image, make_sample_images

MODEL = "tiny-vl"


def _data_url(width: int, height: int, seed: int, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    make_image(width, height, seed).save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_message(text: str, url: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("served-images")
    make_image(160, 120, 5).save(root / "cat.png")
    return root


@pytest.fixture(scope="module")
def base_url(ray_local, tiny_model_dir, image_root):
    from ray import serve

    config = ServerConfig(model=str(tiny_model_dir), served_model_name=MODEL, device_profile="cpu",
                          num_cpus_per_replica=1, default_max_tokens=12, image_root=str(image_root))
    try:
        yield run_local(config)
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def llm(tiny_loaded, tiny_config):
    """The engine in this process, for the answers the server must give."""
    return LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded)


@pytest.fixture(scope="module")
def local(llm):
    return lambda messages, **sampling: llm.generate([{"id": "x", "messages": messages, **sampling}])[0]


def _check_same(response, expected):
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].finish_reason == expected.finish_reason
    assert response.usage.prompt_tokens == expected.num_prompt_tokens
    assert response.usage.completion_tokens == expected.num_generated_tokens
    assert response.usage.total_tokens == expected.num_prompt_tokens + expected.num_generated_tokens


def test_models_list(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_health(base_url):
    answer = httpx.get(f"{base_url}/health", timeout=30)
    assert answer.status_code == 200 and answer.json()["status"] == "ok"


def test_image_chat(client, local, image_root):
    messages = [{"role": "system", "content": "Answer briefly."},
                _image_message("What is in this image?", _data_url(200, 150, 1))]
    response = client.chat.completions.create(model=MODEL, messages=messages)
    _check_same(response, local(messages))
    assert response.id.startswith("chatcmpl-") and response.model == MODEL
    by_path = [_image_message("And this one?", "cat.png")]  # a path under the server's image root
    _check_same(client.chat.completions.create(model=MODEL, messages=by_path, max_tokens=5),
                local([_image_message("And this one?", str(image_root / "cat.png"))], max_tokens=5))


def test_text_chat(client, local):
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another one?"}]
    _check_same(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=9),
                local(messages, max_tokens=9))


@pytest.mark.parametrize("messages, extra", [
    ([_image_message("Describe it.", _data_url(320, 240, 2, "JPEG"))], {"max_tokens": 16}),
    ([{"role": "user", "content": "Describe a street at night."}], {"max_tokens": 20}),
])
def test_streaming_equals_non_streaming(client, messages, extra):
    whole = client.chat.completions.create(model=MODEL, messages=messages, **extra)
    for stop in (None, [whole.choices[0].message.content[3:5]]):
        if stop is not None:
            whole = client.chat.completions.create(model=MODEL, messages=messages, stop=stop, **extra)
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stop=stop, stream=True,
                                                     stream_options={"include_usage": True}, **extra))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
        assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
        assert len({c.id for c in chunks}) == 1


def test_16_concurrent_requests_are_all_answered(client, llm):
    conversations = [[{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}] if i % 2 else
                     [_image_message(f"Picture {i}?", _data_url(64 + 16 * i, 64, i))] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda m: client.chat.completions.create(model=MODEL, messages=m), conversations))
    # Batched greedy output equals one-at-a-time output (test_batch_generator), so one local batch will do.
    expected = llm.generate([{"id": str(i), "messages": m} for i, m in enumerate(conversations)])
    for response, result in zip(responses, expected):
        _check_same(response, result)


def _user(text="Hi"):
    return [{"role": "user", "content": text}]


BAD_REQUESTS = {
    "malformed JSON": (b'{"model": "tiny-vl", "messages": [', "invalid_json", None, "not valid JSON"),
    "missing field": ({"model": MODEL}, "invalid_request", "messages", "Field required"),
    "wrong type": ({"model": MODEL, "messages": _user(), "max_tokens": "ten"}, "invalid_request", "max_tokens",
                   "valid integer"),
    "unknown role": ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "invalid_request",
                     "messages.0.role", "'user', 'assistant' or 'tool'"),
    "unknown part": ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
                     "invalid_request", "messages.0.content.0", "does not match any of the expected tags"),
    "audio part": ({"model": MODEL, "messages": [{"role": "user", "content": [
                   {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]},
                   "invalid_request", "messages.0.content.0", "does not match any of the expected tags"),
    "not an image": ({"model": MODEL, "messages": [_image_message("x", "data:text/plain;base64,"
                     + base64.b64encode(b"<html>hello</html>").decode())]}, "unsupported_image", "messages",
                     "unsupported image type (HTML)"),
    "corrupt base64": ({"model": MODEL, "messages": [_image_message("x", "data:image/png;base64,@@notbase64@@")]},
                       "corrupt_image", "messages", "corrupt base64"),
    "path traversal": ({"model": MODEL, "messages": [_image_message("x", "../../../../etc/passwd")]},
                       "image_path_not_allowed", "messages", "outside the allowed folder"),
    "absolute path outside": ({"model": MODEL, "messages": [_image_message("x", "file:///etc/passwd")]},
                              "image_path_not_allowed", "messages", "outside the allowed folder"),
    "http while off": ({"model": MODEL, "messages": [_image_message("x", "http://127.0.0.1:1/cat.png")]},
                       "image_url_not_allowed", "messages", "not fetched here"),
    "n over 16": ({"model": MODEL, "messages": _user(), "n": 17}, "invalid_request", "n", "less than or equal to 16"),
    "n 0": ({"model": MODEL, "messages": _user(), "n": 0}, "invalid_request", "n", "greater than or equal to 1"),
    "logit_bias": ({"model": MODEL, "messages": _user(), "logit_bias": {"3": 1}}, "invalid_request", "logit_bias",
                   "not supported"),
    "legacy functions": ({"model": MODEL, "messages": _user(), "functions": [{"name": "f"}]}, "invalid_request",
                         "functions", "send `tools`"),
    "top_logprobs 21": ({"model": MODEL, "messages": _user(), "logprobs": True, "top_logprobs": 21},
                        "invalid_request", "top_logprobs", "less than or equal to 20"),
    "frequency_penalty -3": ({"model": MODEL, "messages": _user(), "frequency_penalty": -3}, "invalid_request",
                             "frequency_penalty", "greater than or equal to -2"),
    "presence_penalty 2.5": ({"model": MODEL, "messages": _user(), "presence_penalty": 2.5}, "invalid_request",
                             "presence_penalty", "less than or equal to 2"),
    "response_format xml": ({"model": MODEL, "messages": _user(), "response_format": {"type": "xml"}},
                            "invalid_request", "response_format.type", "'text', 'json_object' or 'json_schema'"),
    "over the context": ({"model": MODEL, "messages": _user("word " * 3000)}, "context_length_exceeded",
                         "messages", "over the model's context of 2048"),
    "tools": ({"model": MODEL, "messages": _user(), "tools": [{"type": "function"}]}, "invalid_request",
              "tools.0.function", "Field required"),
    "tool_choice without tools": ({"model": MODEL, "messages": _user(), "tool_choice": "required"},
                                  "invalid_request", "tool_choice", "`tools` is empty"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_400_and_the_server_goes_on(base_url, client, case):
    body, code, param, fragment = BAD_REQUESTS[case]
    sent = {"content": body} if isinstance(body, bytes) else {"json": body}
    answer = httpx.post(f"{base_url}/v1/chat/completions", headers={"Content-Type": "application/json"},
                        timeout=60, **sent)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert fragment in error["message"]
    if isinstance(body, dict) and {"model", "messages"} <= body.keys():  # the official client gets it too
        with pytest.raises(openai.BadRequestError, match="400"):
            client.chat.completions.create(**body)
    assert client.chat.completions.create(model=MODEL, messages=_user(), max_tokens=2).choices[0].finish_reason


def test_completions_and_tools_through_serve(client, llm):
    prompt = "A photo of a red"
    expected = llm.generate([{"id": "c", "prompt": prompt, "chat_template": False, "max_tokens": 6}])[0]
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6)
    assert answer.choices[0].text == expected.text and answer.usage.prompt_tokens == expected.num_prompt_tokens
    streamed = "".join(c.choices[0].text for c in client.completions.create(model=MODEL, prompt=prompt, max_tokens=6,
                                                                            stream=True) if c.choices)
    assert streamed == expected.text
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    history = _user("Find it.") + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "found"}]
    expected = llm.generate([{"id": "t", "messages": history, "tools": tools, "max_tokens": 5}])[0]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=tools, max_tokens=5,
                                            extra_body={"top_k": 0, "repetition_penalty": 1.0})
    assert answer.usage.prompt_tokens == expected.num_prompt_tokens
    assert answer.choices[0].message.content == expected.text


def test_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError, match="does not exist here") as info:
        client.chat.completions.create(model="gpt-4o", messages=_user())
    assert info.value.code == "model_not_found" and info.value.param == "model"


def test_readme_client_example_runs(base_url, tmp_path):
    root = Path(__file__).resolve().parents[3]
    readme = (root / "README.md").read_text()
    example = re.search(r"From Python:\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert 'base_url="http://127.0.0.1:8000/v1"' in example
    make_sample_images(tmp_path / "artifacts" / "demo-images")
    done = subprocess.run([sys.executable, "-c", example.replace("http://127.0.0.1:8000", base_url)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CompletionUsage(completion_tokens=" in done.stdout


def test_a_replica_preprocesses_once_with_the_servers_policy_and_the_image_cache(tiny_model_dir, image_root):
    """Item 3 of issue 10: one preprocessor per replica (its LLM's), behind the preprocessed-image cache."""
    import torch

    from actors.serve.deployment import build_service
    from vlray.schema import RequestError

    make_image(97, 61, 41).save(image_root / "only-here.png")
    threads = torch.get_num_threads()
    service, llm = build_service(ServerConfig(model=str(tiny_model_dir), device_profile="cpu", num_threads=threads,
                                         image_root=str(image_root)))
    try:
        preprocessor = service.preprocessor
        assert preprocessor is llm.preprocessor
        assert preprocessor.image_policy.local_root == image_root and preprocessor.image_cache is not None
        request = {"id": "a", "prompt": "What?", "images": [str(image_root / "only-here.png")]}
        first, second = preprocessor.prepare(request), preprocessor.prepare(request)
        assert (preprocessor.image_cache.num_misses, preprocessor.image_cache.num_hits) == (1, 1)
        assert (first.input_ids == second.input_ids).all() and (first.pixel_values == second.pixel_values).all()
        with pytest.raises(RequestError):  # the server's policy: nothing outside image_root
            preprocessor.prepare({"id": "b", "prompt": "What?", "images": [str(tiny_model_dir / "config.json")]})
    finally:
        service.engine.close()
        torch.set_num_threads(threads)
