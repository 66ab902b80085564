"""Batched generation (static batches through transformers generate) against plain generate one request at a time.

Both run the same requests in the same process on the same model; greedy outputs are checked equal, then
rows/s, generated tokens/s and their ratio are printed.
"""

from __future__ import annotations

import argparse
import json
import time

from jobs.bench.bench_models import load_bench_model, set_threads, tiny_model_dir
from jobs.bench.workloads import mixed_workload
from vlray.config import EngineConfig
from vlray.llm import LLM
from vlray.testing.reference import reference_generate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=["tiny", "2b"], default="tiny", help="tiny model or random full-size 2B")
    parser.add_argument("--requests", type=int, default=None, help="number of requests (default 48 tiny, 4 2b)")
    parser.add_argument("--max-tokens", type=int, default=None, help="new tokens per request (default 32 tiny, 8 2b)")
    parser.add_argument("--device-profile", default="auto", choices=["auto", "cpu", "sm61", "modern"])
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch-tokens", type=int, default=8192, help="token budget of a batch")
    parser.add_argument("--max-pixels", type=int, default=None, help="image pixel cap (default 1 MP tiny, 0.25 MP 2b)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the figures to this file")


def run(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    is_tiny = args.size == "tiny"
    num_requests = args.requests or (48 if is_tiny else 4)
    max_tokens = args.max_tokens or (32 if is_tiny else 8)
    max_pixels = args.max_pixels or (1024 * 1024 if is_tiny else 512 * 512)
    folder = tiny_model_dir()
    config = EngineConfig(model=str(folder), device_profile=args.device_profile, dtype=args.dtype,
                          max_batch_tokens=args.batch_tokens, max_pixels=max_pixels, default_max_tokens=max_tokens)
    loaded, load_seconds = load_bench_model(args.size, config, folder)
    requests = mixed_workload(num_requests, max_tokens, text_fraction=0.25 if is_tiny else 0.5)
    print(f"model: {args.size} on {loaded.profile.describe()} (ready in {load_seconds:.1f} s); "
          f"{num_requests} requests, {max_tokens} new tokens each")

    # Warm-up outside the clocks (first-call allocations, lazy imports).
    reference_generate(loaded, requests[0], max_tokens)

    start = time.perf_counter()
    reference = [reference_generate(loaded, r, max_tokens) for r in requests]
    one_by_one_s = time.perf_counter() - start

    llm = LLM(config.with_updates(backend="hf"), loaded=loaded)
    start = time.perf_counter()
    results = llm.generate(requests)
    batched_s = time.perf_counter() - start

    mismatches = [r.id for r, ref in zip(results, reference) if r.token_ids != ref]
    tokens = sum(len(ref) for ref in reference)
    figures = {
        "model": args.size,
        "device": loaded.profile.describe(),
        "requests": num_requests,
        "generated_tokens": tokens,
        "one_by_one_rows_per_s": num_requests / one_by_one_s,
        "batched_rows_per_s": num_requests / batched_s,
        "one_by_one_tokens_per_s": tokens / one_by_one_s,
        "batched_tokens_per_s": tokens / batched_s,
        "speedup": one_by_one_s / batched_s,
        "padding_fraction": llm.stats.padding_fraction,
        "num_batches": llm.stats.num_batches,
        "greedy_mismatches": mismatches,
    }
    print(f"{'path':<28}{'rows/s':>10}{'tokens/s':>12}")
    print(f"{'generate, one at a time':<28}{figures['one_by_one_rows_per_s']:>10.2f}"
          f"{figures['one_by_one_tokens_per_s']:>12.1f}")
    print(f"{'vlray batched':<28}{figures['batched_rows_per_s']:>10.2f}{figures['batched_tokens_per_s']:>12.1f}")
    print(f"speed-up (batched / one at a time): {figures['speedup']:.2f}x in {figures['num_batches']} batches, "
          f"padding fraction {figures['padding_fraction']:.3f}")
    print("greedy outputs identical" if not mismatches else f"greedy outputs DIFFER for {mismatches}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures
