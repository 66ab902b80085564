"""The server tried as a hostile client would, on one shared Serve app (and the session's one local Ray).

Every case is sent together with a good request; the case must get its status (a 4xx in OpenAI's error
shape, never a 5xx for a client's mistake; a 200 for edge values the server clamps), the good request its
exact greedy answer, and /health must say ok afterwards. An http.server thread on 127.0.0.1 stands for hostile
image hosts: the server must refuse it (loopback) since allow_private_image_hosts is off."""

import base64
import functools
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from actors.serve.deployment import run_local
from vlray.serving.server_config import ServerConfig
from vlray.llm import LLM
from vlray.testing.sample_images import make_image

MODEL = "tiny-fuzz"
GOOD = [{"role": "user", "content": "Tell me about the sea."}]
GOOD_MAX_TOKENS = 6
MAX_REQUEST_BYTES = 3 << 20
ERROR_FIELDS = {"message", "type", "param", "code"}


@functools.lru_cache(maxsize=None)
def _png(width=32, height=32) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image(url, text="What is it?"):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def _chat(messages=None, **extra):
    return {"model": MODEL, "messages": messages or [{"role": "user", "content": "Hi"}], "max_tokens": 3, **extra}


class _Hostile(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"\x89PNG")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def hostile_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-images")
    make_image(48, 40, 1).save(root / "ok.png")
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    return root


@pytest.fixture(scope="module")
def base_url(ray_local, tiny_model_dir, image_root):
    from ray import serve

    config = ServerConfig(model=str(tiny_model_dir), served_model_name=MODEL, device_profile="cpu",
                          num_cpus_per_replica=1, default_max_tokens=8, image_root=str(image_root),
                          allow_http_images=True, image_fetch_timeout_s=2.0, max_request_bytes=MAX_REQUEST_BYTES,
                          max_batch_size=8, max_queued_requests=8)
    try:
        yield run_local(config)
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def greedy_answer(tiny_loaded, tiny_config):
    """The good request's answer from the engine in this process."""
    result = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded).generate(
        [{"id": "good", "messages": GOOD, "max_tokens": GOOD_MAX_TOKENS}])[0]
    return result.text


def _cases(image_root, hostile):
    """name -> (body: dict or raw bytes, expected status, expected error code or None for a 200)."""
    over_context = "word " * 40_000
    return {
        # Sampling at the edge: clamped, computable, answered.
        "temperature 1e-300": (_chat(temperature=1e-300), 200, None),
        "temperature 5e-324 streamed": (_chat(temperature=5e-324, stream=True), 200, None),
        "top_p 1e-300": (_chat(temperature=1.0, top_p=1e-300), 200, None),
        "seed 2**64": (_chat(temperature=1.0, seed=2**64), 200, None),
        "seed 2**70 streamed": (_chat(temperature=0.7, seed=2**70, stream=True), 200, None),
        "seed below -2**63": (_chat(temperature=1.0, seed=-2**63 - 1), 200, None),
        "max_tokens 2**70": (_chat(max_tokens=2**70), 200, None),
        "temperature NaN": (b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'
                            % MODEL.encode(), 400, None),
        "top_p Infinity": (b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "top_p": Infinity}'
                           % MODEL.encode(), 400, None),
        "temperature -1": (_chat(temperature=-1), 400, "invalid_request"),
        "temperature 3": (_chat(temperature=3), 400, "invalid_request"),
        "top_p 0": (_chat(top_p=0), 400, "invalid_request"),
        "max_tokens 0": (_chat(max_tokens=0), 400, "invalid_request"),
        "empty stop": (_chat(stop=[""]), 400, "invalid_request"),
        "n 17": (_chat(n=17), 400, "invalid_request"),
        "n -1": (_chat(n=-1), 400, "invalid_request"),
        "top_k 2**70": (_chat(top_k=2**70), 200, None),
        "top_k -2": (_chat(top_k=-2), 400, "invalid_request"),
        "min_p NaN": (b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "min_p": NaN}'
                      % MODEL.encode(), 400, None),
        "repetition_penalty 1e-300": (_chat(repetition_penalty=1e-300), 200, None),
        "repetition_penalty -1": (_chat(repetition_penalty=-1), 400, "invalid_request"),
        "presence_penalty Infinity": (b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], '
                                      b'"presence_penalty": Infinity}' % MODEL.encode(), 400, None),
        "frequency_penalty -2": (_chat(frequency_penalty=-2, temperature=1.0, seed=1), 200, None),
        "top_logprobs 10**6": (_chat(logprobs=True, top_logprobs=10**6), 400, "invalid_request"),
        "logit_bias": (_chat(logit_bias={"1": 100}), 400, "invalid_request"),
        "function_call": (_chat(function_call={"name": "f"}), 400, "invalid_request"),
        "tool without function": (_chat(tools=[{"type": "function"}]), 400, "invalid_request"),
        "tool schema not an object": (_chat(tools=[{"type": "function", "function": {"name": "f", "parameters": 3}}]),
                                      400, "invalid_request"),
        "audio part": (_chat([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]), 400,
                       "invalid_request"),
        "tool turn without id": (_chat([{"role": "tool", "content": "x"}]), 400, "invalid_request"),
        "assistant null content": (_chat([{"role": "user", "content": "x"}, {"role": "assistant", "content": None}]),
                                   400, "invalid_request"),
        "completions echo": ({"model": MODEL, "prompt": "x", "echo": True, "_path": "/v1/completions"}, 400,
                             "invalid_request"),
        "completions prompt list of 2": ({"model": MODEL, "prompt": ["a", "b"], "_path": "/v1/completions"}, 400,
                                         "invalid_request"),
        "completions empty prompt": ({"model": MODEL, "prompt": "", "_path": "/v1/completions"}, 400, None),
        # Bodies.
        "malformed JSON": (b'{"model": ', 400, "invalid_json"),
        "empty body": (b"", 400, "invalid_json"),
        "JSON array": (b"[1, 2]", 400, "invalid_request"),
        "not UTF-8": (b'{"model": "\xff\xfe"}', 400, None),
        "deeply nested": (b'{"model": "x", "messages": ' + b"[" * 20000 + b"]" * 20000 + b"}", 400, None),
        "empty messages": (_chat(messages=[]) | {"messages": []}, 400, "invalid_request"),
        "unknown model": (_chat() | {"model": "gpt-4o"}, 404, "model_not_found"),
        "body over max_request_bytes": (_chat([{"role": "user", "content": "x" * (MAX_REQUEST_BYTES + 10)}]), 413,
                                        "request_too_large"),
        # Work bounded before the expensive parts.
        "17 images": (_chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _png()}}] * 17
                              + [{"type": "text", "text": "?"}]}]), 400, "too_many_images"),
        "over max_request_chars": (_chat([{"role": "user", "content": "y" * 1_000_001}]), 400,
                                   "request_too_large"),
        "over the context": (_chat([{"role": "user", "content": over_context}]), 400, "context_length_exceeded"),
        "6000x6000 image": (_chat(_image(_png(6000, 6000))), 200, None),
        "aspect 1x300": (_chat(_image(_png(1, 300))), 400, "invalid_image"),
        "corrupt base64": (_chat(_image("data:image/png;base64,@@@")), 400, "corrupt_image"),
        "truncated png": (_chat(_image(_png()[:80])), 400, None),
        # Paths under image_root.
        "good path": (_chat(_image("ok.png")), 200, None),
        "NUL byte": (_chat(_image("ok\x00.png")), 400, "image_path_invalid"),
        "file URL %00": (_chat(_image("file:///x%00.png")), 400, None),
        "over-long name": (_chat(_image("n" * 300 + ".png")), 400, None),
        "over-long path": (_chat(_image("d/" * 2100 + "x.png")), 400, None),
        "symlink loop": (_chat(_image("loop1")), 400, "image_path_invalid"),
        "traversal": (_chat(_image("../../../../etc/passwd")), 400, "image_path_not_allowed"),
        "missing file": (_chat(_image("nope.png")), 400, "image_not_found"),
        # Fetches: the loopback test server, a name for it, the cloud metadata address.
        "http loopback": (_chat(_image(f"http://{hostile}/x.png")), 400, "image_url_not_allowed"),
        "http localhost": (_chat(_image(f"http://{hostile.replace('127.0.0.1', 'localhost')}/x.png")), 400,
                           "image_url_not_allowed"),
        "http link-local": (_chat(_image("http://169.254.169.254/latest/meta-data")), 400, "image_url_not_allowed"),
        "http private": (_chat(_image("http://10.0.0.1/x.png")), 400, "image_url_not_allowed"),
        "ftp URL": (_chat(_image("ftp://example.com/x.png")), 400, "invalid_image"),
    }


CASE_NAMES = list(_cases("/root", "127.0.0.1:1"))


def _send(base_url, body):
    path = "/v1/chat/completions"
    if isinstance(body, dict) and "_path" in body:
        body = dict(body)
        path = body.pop("_path")
    sent = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(f"{base_url}{path}", headers={"Content-Type": "application/json"}, timeout=120, **sent)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_case(base_url, image_root, hostile_host, greedy_answer, fuzz_tally, case):
    body, status, code = _cases(image_root, hostile_host)[case]
    good = {"model": MODEL, "messages": GOOD, "max_tokens": GOOD_MAX_TOKENS}
    with ThreadPoolExecutor(2) as pool:
        answer, good_answer = pool.map(lambda b: _send(base_url, b), [body, good])
    fuzz_tally["server cases"] += 1
    client_mistake = status >= 400
    if client_mistake and 400 <= answer.status_code < 500:
        fuzz_tally["server correct 4xx"] += 1
    if client_mistake and answer.status_code >= 500:
        fuzz_tally["server 5xx for client mistakes"] += 1
    disturbed = good_answer.status_code != 200 or good_answer.json()["choices"][0]["message"]["content"] != greedy_answer
    fuzz_tally["server good requests disturbed"] += int(disturbed)
    assert answer.status_code == status, answer.text[:300]
    if status >= 400:
        error = answer.json()["error"]
        assert set(error) == ERROR_FIELDS and error["type"] == "invalid_request_error"
        assert code is None or error["code"] == code, error
        assert str(image_root) not in error["message"] and "fuzz-images" not in error["message"]
    elif body.get("stream") if isinstance(body, dict) else False:
        assert answer.text.rstrip().endswith("data: [DONE]")
    else:
        assert answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert not disturbed, good_answer.text[:300]
    health = httpx.get(f"{base_url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_overload_is_a_429_in_openai_shape_with_retry_after(base_url, greedy_answer, fuzz_tally):
    # 8 generating + 8 queued are admitted; a burst of 48 must see the rest refused, every refusal in JSON.
    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            import asyncio
            return await asyncio.gather(*[client.post(f"{base_url}/v1/chat/completions",
                                                      json=_chat(max_tokens=8)) for _ in range(48)])

    import asyncio
    answers = asyncio.run(burst())
    statuses = [a.status_code for a in answers]
    fuzz_tally["server cases"] += 1
    refused = [a for a in answers if a.status_code == 429]
    assert set(statuses) <= {200, 429} and refused, statuses
    for answer in refused:
        assert set(answer.json()["error"]) == ERROR_FIELDS and answer.json()["error"]["type"] == "rate_limit_error"
        assert int(answer.headers["retry-after"]) >= 1
    fuzz_tally["server correct 4xx"] += 1
    time.sleep(0.5)
    good = _send(base_url, {"model": MODEL, "messages": GOOD, "max_tokens": GOOD_MAX_TOKENS})
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"] == greedy_answer
    assert httpx.get(f"{base_url}/health", timeout=10).json()["status"] == "ok"
