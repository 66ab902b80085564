"""The continuous-batching engine against transformers `generate` with static batches and one request at a
time: tokens/s and time to first token, on the same requests in the same run.

The workload: output lengths from 8 to 256 tokens (log-uniform; 8 to 32 for the 2B model on a CPU), images
of several sizes, some requests sharing an image or a system prompt, some text-only; arriving all at once, and
again spread over time (Poisson arrivals). A text-only part adds transformers' own continuous batching
(`generate_batch`), which takes token ids only. On a CUDA GPU, a decode micro-benchmark follows
(jobs/bench/decode_bench.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig

from jobs.bench.bench_models import load_bench_model, set_threads, tiny_model_dir
from vlray.config import EngineConfig
from vlray.inputs.prepared_request import PreparedRequest
from vlray.llm import LLM
from vlray.schema import GenerationResult
from vlray.testing.sample_images import make_image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=["tiny", "2b"], default="tiny")
    parser.add_argument("--requests", type=int, default=None, help="default 48 (tiny), 6 (2b)")
    parser.add_argument("--max-output", type=int, default=None, help="longest output (default 256 tiny, 32 2b)")
    parser.add_argument("--arrival-rate", type=float, default=None,
                        help="requests/s of the spread-out arrivals (default: about the engine's own rate)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows of a static batch / engine seats")
    parser.add_argument("--device-profile", default="auto", choices=["auto", "cpu", "sm61", "modern"])
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--skip-one-at-a-time", action="store_true", help="(slow on the 2B model)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of the engine and static-batch paths (interleaved); each keeps its fastest")
    parser.add_argument("--json", default=None)


@dataclass
class Timed:
    """One path's results and clocks."""

    results: list[GenerationResult]
    wall_s: float
    ttft_s: list[float]

    @property
    def tokens(self) -> int:
        return sum(r.num_generated_tokens for r in self.results)

    def row(self) -> dict:
        return {"tokens_per_s": self.tokens / self.wall_s, "wall_s": self.wall_s,
                "ttft_mean_s": statistics.fmean(self.ttft_s), "ttft_p50_s": statistics.median(self.ttft_s)}


def workload(count: int, max_output: int, seed: int = 0) -> list[dict]:
    """Shared images (three questions each), a shared system prompt, text-only rows, log-uniform lengths."""
    rng = random.Random(seed)
    shared = [make_image(*size, seed=100 + i) for i, size in enumerate([(448, 336), (256, 256), (640, 480)])]
    system = {"role": "system", "content": "You are vlray's assistant. Be accurate and brief. " * 4}
    requests = []
    for i in range(count):
        max_tokens = int(round(8 * (max_output / 8) ** rng.random()))
        kind = i % 4
        if kind == 0:
            request = {"prompt": f"Question {i}: what do you see?", "images": [shared[(i // 4) % len(shared)]]}
        elif kind == 1:
            request = {"messages": [system, {"role": "user", "content": f"Tell me fact number {i}."}]}
        elif kind == 2:
            size = rng.choice([(64, 64), (320, 240), (512, 384), (800, 600)])
            request = {"prompt": "Describe this picture.", "images": [make_image(*size, seed=i)]}
        else:
            request = {"prompt": "Write about the sea. " * rng.randint(1, 6)}
        requests.append({"id": f"r{i}", "max_tokens": max_tokens, **request})
    return requests


def run_all_at_once(llm: LLM, prepared: list[PreparedRequest]) -> Timed:
    first: dict[str, float] = {}
    start = time.perf_counter()
    results = llm.generate_prepared(prepared, sink=lambda d: first.setdefault(d.request_id, time.perf_counter()))
    wall = time.perf_counter() - start
    return Timed(results, wall, [first.get(r.id, start + wall) - start for r in results])


def run_engine_arrivals(llm: LLM, prepared: list[PreparedRequest],
                        arrivals: list[float]) -> Timed:
    """Requests enter the engine when their arrival time comes; steps run in between."""
    engine = llm.backend
    first: dict[str, float] = {}
    results: dict[str, GenerationResult] = {}
    start, next_index = time.perf_counter(), 0
    while len(results) < len(prepared):
        now = time.perf_counter() - start
        while next_index < len(prepared) and arrivals[next_index] <= now:
            engine.add(prepared[next_index])
            next_index += 1
        if not engine.has_unfinished():
            time.sleep(max(0.0, arrivals[next_index] - now))
            continue
        for _, result in engine.step(lambda d: first.setdefault(d.request_id, time.perf_counter())):
            results[result.id] = result
    wall = time.perf_counter() - start
    ordered = [results[p.request_id] for p in prepared]
    return Timed(ordered, wall, [first[p.request_id] - start - a for p, a in zip(prepared, arrivals)])


def run_static_arrivals(llm: LLM, prepared: list[PreparedRequest], arrivals: list[float]) -> Timed:
    """A server with static batches: take whatever has arrived, run it to the end, repeat."""
    first: dict[str, float] = {}
    results: list[GenerationResult] = []
    start, next_index = time.perf_counter(), 0
    while next_index < len(prepared):
        now = time.perf_counter() - start
        if arrivals[next_index] > now:
            time.sleep(arrivals[next_index] - now)
            now = arrivals[next_index]
        batch = []
        while next_index < len(prepared) and arrivals[next_index] <= now:
            batch.append(prepared[next_index])
            next_index += 1
        results += llm.generate_prepared(batch, sink=lambda d: first.setdefault(d.request_id, time.perf_counter()))
    wall = time.perf_counter() - start
    return Timed(results, wall, [first[p.request_id] - start - a for p, a in zip(prepared, arrivals)])


def run_generate_batch(loaded, prepared: list[PreparedRequest], max_tokens: int) -> tuple[float, int]:
    """transformers' continuous batching (token ids only): (seconds, generated tokens)."""
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=loaded.eos_token_ids,
                              pad_token_id=loaded.pad_token_id)
    start = time.perf_counter()
    outputs = loaded.model.generate_batch(inputs=[p.input_ids.tolist() for p in prepared], generation_config=config)
    wall = time.perf_counter() - start
    return wall, sum(len(o.generated_tokens) for o in outputs.values())


def run(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    is_tiny = args.size == "tiny"
    count = args.requests or (48 if is_tiny else 6)
    max_output = args.max_output or (256 if is_tiny else 32)
    folder = tiny_model_dir()
    config = EngineConfig(model=str(folder), device_profile=args.device_profile, dtype=args.dtype,
                          max_batch_size=args.batch_size, max_pixels=(1024 * 1024 if is_tiny else 256 * 256),
                          default_max_tokens=max_output)
    loaded, load_s = load_bench_model(args.size, config, folder)
    print(f"model: {args.size} on {loaded.profile.describe()} (ready in {load_s:.1f} s); {count} requests, "
          f"outputs 8..{max_output} tokens, batch size {args.batch_size}")
    engine = LLM(config, loaded=loaded)
    static = LLM(config.with_updates(backend="hf"), loaded=loaded)
    single = LLM(config.with_updates(backend="hf", max_batch_size=1), loaded=loaded)
    prepared = [engine.preprocessor.prepare(r) for r in workload(count, max_output)]
    engine.generate_prepared(prepared[:2])  # warm-up outside the clocks (each round resets the prefix cache)

    figures: dict = {"model": args.size, "device": loaded.profile.describe(), "requests": count}

    def engine_cold() -> Timed:
        engine.backend.block_manager.reset_prefix_cache()  # every round starts with a cold prefix cache
        return run_all_at_once(engine, prepared)

    paths: dict[str, Callable[[], Timed]] = {
        "engine": engine_cold,
        "generate, static batches": lambda: run_all_at_once(static, prepared),
    }
    # Rounds interleave the two paths, so a busy spell of the machine hits both; each keeps its fastest round.
    rounds = [{name: path() for name, path in paths.items()} for _ in range(max(1, args.repeats))]
    all_at_once = {name: min((r[name] for r in rounds), key=lambda t: t.wall_s) for name in paths}
    figures["round_ratios"] = [r["engine"].tokens / r["engine"].wall_s
                               / (r["generate, static batches"].tokens / r["generate, static batches"].wall_s)
                               for r in rounds]
    if not args.skip_one_at_a_time:
        all_at_once["generate, one at a time"] = run_all_at_once(single, prepared)
    rate = args.arrival_rate or count / all_at_once["engine"].wall_s
    arrivals = list(_poisson_arrivals(count, rate))
    engine.backend.block_manager.reset_prefix_cache()
    spread = {"engine": run_engine_arrivals(engine, prepared, arrivals),
              "generate, static batches": run_static_arrivals(static, prepared, arrivals)}

    reference = all_at_once.get("generate, one at a time") or all_at_once["generate, static batches"]
    figures["greedy_mismatches_engine"] = [r.id for r, ref in zip(all_at_once["engine"].results, reference.results)
                                           if r.token_ids != ref.token_ids]
    figures["all_at_once"] = {name: t.row() for name, t in all_at_once.items()}
    figures["spread_over_time"] = {name: t.row() for name, t in spread.items()}
    figures["arrival_rate_per_s"] = rate
    _print("all at once", figures["all_at_once"])
    _print(f"spread over time ({rate:.2f} requests/s)", figures["spread_over_time"])
    engine_tps = figures["all_at_once"]["engine"]["tokens_per_s"]
    figures["speedup_over_static"] = engine_tps / figures["all_at_once"]["generate, static batches"]["tokens_per_s"]
    print(f"engine / static batches: {figures['speedup_over_static']:.2f}x tokens/s (fastest round of each; "
          f"per round {', '.join(f'{r:.2f}x' for r in figures['round_ratios'])}); prefix-cached prompt tokens, all rounds, "
          f"{engine.stats.num_prefix_cached_tokens}; greedy mismatches {figures['greedy_mismatches_engine'] or 'none'}")

    figures["text_only"] = _text_only(loaded, engine, static, prepared, max_output)
    if torch.cuda.is_available() and loaded.profile.is_cuda:
        from jobs.bench.decode_bench import decode_figures

        figures["cuda_decode"] = decode_figures(loaded, config)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


def _text_only(loaded, engine, static, prepared: list[PreparedRequest], max_output: int) -> dict:
    """Text-only requests, one output length for all (generate_batch takes one), three continuous/static paths."""
    length = min(64, max_output)
    texts = [dataclasses.replace(p, sampling=dataclasses.replace(p.sampling, max_tokens=length))
             for p in prepared if p.pixel_values is None]
    rows = {"engine": run_all_at_once(engine, texts), "generate, static batches": run_all_at_once(static, texts)}
    figures = {name: t.tokens / t.wall_s for name, t in rows.items()}
    try:
        wall, tokens = run_generate_batch(loaded, texts, length)
        figures["transformers generate_batch"] = tokens / wall
    except Exception as exc:  # an API that moves between transformers releases: report, do not fail the bench
        figures["transformers generate_batch"] = f"failed: {exc}"
    print(f"text only ({len(texts)} requests x {length} tokens), tokens/s:")
    for name, value in figures.items():
        print(f"  {name:<34}{value if isinstance(value, str) else f'{value:10.1f}'}")
    return figures


def _poisson_arrivals(count: int, rate: float, seed: int = 1):
    rng = random.Random(seed)
    clock = 0.0
    for _ in range(count):
        yield clock
        clock += rng.expovariate(rate)


def _print(title: str, rows: dict) -> None:
    print(f"{title}:")
    print(f"  {'path':<28}{'tokens/s':>10}{'TTFT mean':>11}{'TTFT p50':>10}")
    for name, row in rows.items():
        print(f"  {name:<28}{row['tokens_per_s']:>10.1f}{row['ttft_mean_s']:>10.2f}s{row['ttft_p50_s']:>9.2f}s")
