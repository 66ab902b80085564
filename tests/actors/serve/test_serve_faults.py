"""Two Serve replicas: their metrics reach the node's Prometheus endpoint; and when one is killed while it streams
answers, Serve replaces it, each request in flight either finishes with the right text or gets an error (never a
hang), and later requests succeed."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import ray
from tests.prometheus_scrape import metric_samples, metric_total, node_metric_ports
from ray import serve

from actors.serve.deployment import run_local
from vlray.serving.server_config import ServerConfig
from vlray.llm import LLM

MODEL, APP = "tiny-vl-faults", "vlray-faults"  # names of their own: metrics are filtered by model
LONG = [{"role": "user", "content": "Tell a very long story about a lighthouse."}]
LONG_TOKENS = 800  # seconds of streaming on the tiny model: the kill lands while every stream runs
NUM_STREAMS = 8


@pytest.fixture(scope="module")
def client(ray_local, tiny_model_dir):
    config = ServerConfig(model=str(tiny_model_dir), served_model_name=MODEL, device_profile="cpu", num_replicas=2,
                          num_cpus_per_replica=0.5, default_max_tokens=8)
    try:
        base_url = run_local(config, name=APP)
        with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
            yield client
    finally:
        serve.shutdown()


def _replica_names() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{APP}#")}


def _running_replicas() -> int:
    return serve.status().applications[APP].deployments["vlray"].replica_states.get("RUNNING", 0)


def _stream(client: openai.OpenAI, chunks: list[int], index: int) -> tuple[str, str]:
    """The streamed text and finish reason, or the text so far and "error: ..." when the stream breaks;
    counts the chunks received in chunks[index]."""
    text = ""
    try:
        for chunk in client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=LONG_TOKENS, stream=True):
            chunks[index] += 1
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                if chunk.choices[0].finish_reason:
                    return text, chunk.choices[0].finish_reason
    except (openai.APIError, httpx.TransportError) as exc:  # an error event, or the connection cut
        return text, f"error: {type(exc).__name__}"
    return text, "error: the stream ended without a finish reason"


def test_replicas_publish_metrics(client):
    """First in this module, so that every vlray_* sample of this model comes from these three requests."""
    answers = [client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=n) for n in (3, 4, 5)]
    ports = node_metric_ports().values()
    deadline = time.monotonic() + 60  # the node's agent exports what workers report (every 10 s by default)
    while metric_total(ports, "ray_vlray_rows_total", model=MODEL) < len(answers) and time.monotonic() < deadline:
        time.sleep(1)
    assert metric_total(ports, "ray_vlray_rows_total", app="serve", model=MODEL, outcome="ok") == len(answers)
    assert metric_total(ports, "ray_vlray_generated_tokens_total", model=MODEL) == \
        sum(a.usage.completion_tokens for a in answers)
    assert metric_total(ports, "ray_vlray_prompt_tokens_total", model=MODEL) == \
        sum(a.usage.prompt_tokens for a in answers)
    assert metric_total(ports, "ray_vlray_model_batches_total", model=MODEL) >= 1
    assert metric_samples(ports, "ray_vlray_queue_depth", model=MODEL)  # the replicas' gauges (0 when idle)


def test_killed_replica_is_replaced_and_later_requests_succeed(client, tiny_loaded, tiny_config):
    expected = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded).generate(
        [{"id": "x", "messages": LONG, "max_tokens": LONG_TOKENS}])[0]
    assert client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2).choices[0].finish_reason
    before = _replica_names()
    assert len(before) == 2

    chunks = [0] * NUM_STREAMS
    with ThreadPoolExecutor(NUM_STREAMS) as pool:
        streams = [pool.submit(_stream, client, chunks, i) for i in range(NUM_STREAMS)]
        deadline = time.monotonic() + 120
        while min(chunks) < 2 and time.monotonic() < deadline:  # every stream has its first tokens
            time.sleep(0.05)
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        outcomes = [s.result(timeout=300) for s in streams]

    failed = [reason for _, reason in outcomes if reason.startswith("error")]
    assert failed, f"the killed replica had streams in flight: they should have failed ({outcomes})"
    for text, reason in outcomes:
        if not reason.startswith("error"):  # streams on the other replica finish, with the right answer
            assert (text, reason) == (expected.text, expected.finish_reason)

    deadline = time.monotonic() + 180
    while (victim in _replica_names() or len(_replica_names()) < 2 or _running_replicas() < 2) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert victim not in _replica_names() and len(_replica_names() - before) == 1 and _running_replicas() == 2

    short = [[{"role": "user", "content": f"Question {i}?"}] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda m: client.chat.completions.create(model=MODEL, messages=m), short))
    assert all(a.choices[0].finish_reason in ("stop", "length") for a in answers)
