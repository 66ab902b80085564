"""The OpenAI server under load: requests/s and p50/p95 latency for 1, 4 and 16 concurrent clients, and the
speed-up of 16 concurrent clients over the same 16 requests sent one after another (same run, same server), and
what the newer request features cost: the same requests with the model card's penalties on, and with a
json_schema response_format, each against plain free text (interleaved rounds, the fastest of each kept).

It starts a local Ray and the Serve app on 127.0.0.1 (a free port), sends a mixed workload (images of many
sizes as data: URLs, and text) through the official `openai` client, and checks that every concurrent answer
equals the sequential answer to the same request (greedy decoding: batching must not change a token).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import time
from typing import Any

import numpy as np

from jobs.bench.bench_models import tiny_model_dir
from jobs.bench.workloads import mixed_workload

MODEL = "vlray-bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels, comma separated")
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the server's max_batch_size")
    parser.add_argument("--device-profile", default="auto", choices=["auto", "cpu", "sm61", "modern"])
    parser.add_argument("--cpus", type=int, default=None, help="CPUs for Ray and the replica (default: all)")
    parser.add_argument("--feature-rounds", type=int, default=3,
                        help="interleaved rounds of free text / penalties / json_schema (0: skip)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")


def run(args: argparse.Namespace) -> dict:
    import ray
    from ray import serve

    from actors.serve.deployment import run_local
    from vlray.serving.server_config import ServerConfig

    cpus = args.cpus or os.cpu_count() or 1
    levels = [int(c) for c in args.clients.split(",")]
    bodies = [_chat_body(r, args.max_tokens) for r in mixed_workload(max(args.requests, 16), args.max_tokens)]
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        config = ServerConfig(model=str(tiny_model_dir()), served_model_name=MODEL, device_profile=args.device_profile,
                              num_cpus_per_replica=cpus, max_batch_size=args.max_batch_size,
                              max_queued_requests=max(64, args.requests), default_max_tokens=args.max_tokens)
        base_url = run_local(config)
        print(f"server: {base_url}, tiny model, {cpus} CPUs, max_batch_size={args.max_batch_size}; "
              f"{args.max_tokens} new tokens per request")
        figures = asyncio.run(_measure(base_url, bodies, levels, args.requests, args.feature_rounds))
    finally:
        serve.shutdown()
        ray.shutdown()
    _report(figures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


async def _measure(base_url: str, bodies: list[dict], levels: list[int], num_requests: int,
                   feature_rounds: int = 0) -> dict:
    import httpx
    import openai

    limits = httpx.Limits(max_connections=max(levels) * 2, max_keepalive_connections=max(levels) * 2)
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600,
                                  http_client=httpx.AsyncClient(limits=limits)) as client:
        await _run_clients(client, bodies[:4], 1)  # warm-up outside the clocks
        sixteen = bodies[:16]
        sequential = await _run_clients(client, sixteen, 1)
        together = await _run_clients(client, sixteen, 16)
        by_level = {c: await _run_clients(client, bodies[:num_requests], c) for c in levels}
        features = await _feature_costs(client, bodies[:num_requests], max(levels), feature_rounds)
    mismatches = [i for i, (a, b) in enumerate(zip(sequential["texts"], together["texts"])) if a != b]
    return {
        "levels": {c: _summary(r) for c, r in by_level.items()},
        "sequential_16_s": sequential["wall_s"],
        "concurrent_16_s": together["wall_s"],
        "speedup_16_concurrent_over_sequential": sequential["wall_s"] / together["wall_s"],
        "greedy_mismatches": mismatches,
        "features": features,
    }


# The request features whose cost the bench reports, each as what it adds to a plain body.
# The card's presence_penalty 1.5, and the two others (repetition_penalty is vLLM's: the openai client's extra_body).
PENALTIES = {"presence_penalty": 1.5, "frequency_penalty": 0.5, "extra_body": {"repetition_penalty": 1.05}}
ANSWER_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["answer", "confidence"], "properties": {
    "answer": {"type": "string", "pattern": "^[A-Za-z ]{1,8}$"},
    "confidence": {"type": "integer", "minimum": 0, "maximum": 100}}}
FEATURES = {
    "free text": {},
    "penalties": PENALTIES,
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "answer",
                                                                              "schema": ANSWER_SCHEMA}}},
}


async def _feature_costs(client: Any, bodies: list[dict], num_clients: int, rounds: int) -> dict:
    """Requests/s and completion tokens/s of the same bodies with each feature, in interleaved rounds (the fastest
    round of each kept, so a noisy moment costs every variant alike)."""
    if rounds <= 0:
        return {}
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for name, extra in FEATURES.items():
            run = await _run_clients(client, [{**body, **extra} for body in bodies], num_clients)
            if name not in best or run["wall_s"] < best[name]["wall_s"]:
                best[name] = run
    out = {}
    for name, run in best.items():
        tokens = sum(run["completion_tokens"])
        out[name] = {"requests_per_s": len(run["texts"]) / run["wall_s"], "tokens_per_s": tokens / run["wall_s"],
                     "mean_completion_tokens": tokens / len(run["texts"]), "clients": num_clients}
    schema_ok = [_validates(text) for text in best["json_schema"]["texts"]]
    out["json_schema"]["valid_fraction"] = sum(schema_ok) / len(schema_ok)
    return out


def _validates(text: str) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), ANSWER_SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


async def _run_clients(client: Any, bodies: list[dict], num_clients: int) -> dict:
    """num_clients workers send the bodies (each takes the next one when its answer arrives)."""
    latencies, texts, tokens = [0.0] * len(bodies), [""] * len(bodies), [0] * len(bodies)
    next_index = iter(range(len(bodies)))

    async def worker() -> None:
        for i in next_index:
            start = time.perf_counter()
            response = await client.chat.completions.create(**bodies[i])
            latencies[i] = time.perf_counter() - start
            texts[i] = response.choices[0].message.content
            tokens[i] = response.usage.completion_tokens

    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(num_clients)])
    return {"wall_s": time.perf_counter() - start, "latencies_s": latencies, "texts": texts,
            "completion_tokens": tokens}


def _summary(run: dict) -> dict:
    latencies = np.asarray(run["latencies_s"])
    return {"requests": len(latencies), "wall_s": run["wall_s"], "requests_per_s": len(latencies) / run["wall_s"],
            "p50_s": float(np.percentile(latencies, 50)), "p95_s": float(np.percentile(latencies, 95))}


def _report(figures: dict) -> None:
    print(f"{'clients':>8}{'requests':>10}{'req/s':>10}{'p50 s':>10}{'p95 s':>10}")
    for clients, level in figures["levels"].items():
        print(f"{clients:>8}{level['requests']:>10}{level['requests_per_s']:>10.2f}{level['p50_s']:>10.3f}"
              f"{level['p95_s']:>10.3f}")
    print(f"16 requests: sequential {figures['sequential_16_s']:.2f} s, 16 concurrent clients "
          f"{figures['concurrent_16_s']:.2f} s: speed-up {figures['speedup_16_concurrent_over_sequential']:.2f}x")
    mismatches = figures["greedy_mismatches"]
    print("greedy answers identical" if not mismatches else f"greedy answers DIFFER for requests {mismatches}")
    features = figures.get("features")
    if features:
        base = features["free text"]
        print(f"request features, {base['clients']} clients (fastest of interleaved rounds):")
        print(f"{'':>14}{'req/s':>10}{'tok/s':>10}{'tok/req':>9}{'req/s ratio':>13}{'tok/s ratio':>13}")
        for name, f in features.items():
            print(f"{name:>14}{f['requests_per_s']:>10.2f}{f['tokens_per_s']:>10.1f}{f['mean_completion_tokens']:>9.1f}"
                  f"{f['requests_per_s'] / base['requests_per_s']:>12.2f}x{f['tokens_per_s'] / base['tokens_per_s']:>12.2f}x")
        print(f"json_schema answers that validate: {features['json_schema']['valid_fraction']:.0%}")


def _chat_body(request: dict, max_tokens: int) -> dict:
    """A workload row as an OpenAI chat body, its images as data: URLs (encoded once, off the clock)."""
    content: list[dict] = []
    for image in request.get("images", []):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        content.append({"type": "image_url", "image_url": {"url": url}})
    content.append({"type": "text", "text": request["prompt"]})
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
