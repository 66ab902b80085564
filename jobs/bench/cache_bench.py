"""The caches against no caches, in one process on one model.

1. Four questions about each of N images (four rounds, like re-runs of a job with a new prompt), with the cache
   off and on: wall time and its ratio, images the vision encoder ran on, hit rate per tier. The cache's tier
   budgets are set from the workload's size so that its entries spread over hot, warm and cold. Greedy
   outputs are checked equal.
2. Cold start from the weights cache: a model folder in bf16 (as Qwen3-VL is published) loaded for the CPU
   profile (float32) by plain from_pretrained, then through the weights cache (first load: convert and write;
   later loads: read the converted copy). Weights are checked equal.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import zlib
from pathlib import Path

import torch

from jobs.bench.bench_models import load_bench_model, set_threads, tiny_model_dir, two_b_config
from jobs.bench.workloads import questions_per_image_workload
from vlray.cache.tiered_store import TieredStore
from vlray.config import EngineConfig
from vlray.llm import LLM
from vlray.model.loader import load_model, load_processor
from vlray.model.presets import build_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=["tiny", "2b"], default="tiny", help="tiny model or random full-size 2B")
    parser.add_argument("--images", type=int, default=None, help="distinct images (default 24 tiny, 4 2b)")
    parser.add_argument("--questions", type=int, default=4, help="questions per image")
    parser.add_argument("--max-tokens", type=int, default=None, help="new tokens per answer (default 8 tiny, 4 2b)")
    parser.add_argument("--max-pixels", type=int, default=None, help="image pixel cap (default 1 MP tiny, 0.25 MP 2b)")
    parser.add_argument("--weights-size", choices=["tiny", "2b", "none"], default=None,
                        help="model for the weights cold-start figures (default: --size)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the figures to this file")


def run(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    figures = {"encoder_cache": encoder_cache_figures(args)}
    weights_size = args.weights_size or args.size
    if weights_size != "none":
        figures["weights_cache"] = weights_cache_figures(weights_size)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


def encoder_cache_figures(args: argparse.Namespace) -> dict:
    is_tiny = args.size == "tiny"
    num_images = args.images or (24 if is_tiny else 4)
    max_tokens = args.max_tokens or (8 if is_tiny else 4)
    max_pixels = args.max_pixels or (1024 * 1024 if is_tiny else 512 * 512)
    folder = tiny_model_dir()
    config = EngineConfig(model=str(folder), device_profile="cpu", max_pixels=max_pixels,
                          default_max_tokens=max_tokens, cache_weights=False)
    loaded, _ = load_bench_model(args.size, config, folder)
    rounds = questions_per_image_workload(num_images, args.questions, max_tokens)
    num_requests = sum(len(r) for r in rounds)
    print(f"model: {args.size} on {loaded.profile.describe()}; {num_images} images x {args.questions} questions "
          f"= {num_requests} requests in {args.questions} rounds, {max_tokens} new tokens each")

    off = LLM(config.with_updates(backend="hf", cache=False), loaded=loaded)
    off.generate(rounds[0][:1])  # warm-up outside the clocks (first-call allocations, lazy imports)
    off.reset_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    expected = [off.generate(r) for r in rounds]
    off_s, off_cpu = time.perf_counter() - start, time.process_time() - cpu_start

    runs = {}
    with tempfile.TemporaryDirectory(prefix="vlray-bench-cache-") as cache_dir:
        # The default budgets (everything fits in hot), then budgets that spread the entries over the tiers.
        for name, store in [("on", TieredStore(Path(cache_dir) / "default", config.cache_hot_bytes,
                                               config.cache_warm_bytes, config.cache_cold_bytes)),
                            ("on_tiered", spread_store(Path(cache_dir) / "spread", off, rounds[0]))]:
            on = LLM(config.with_updates(backend="hf"), loaded=loaded, cache=store)
            start, cpu_start = time.perf_counter(), time.process_time()
            got = [on.generate(r) for r in rounds]
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            runs[name] = {
                "seconds": seconds, "rows_per_s": num_requests / seconds, "speedup_vs_off": off_s / seconds,
                "cpu_seconds": cpu, "cpu_speedup_vs_off": off_cpu / cpu,
                "images_encoded": on.stats.num_images_encoded,
                "preprocessed_hits": on.stats.num_preprocessed_cache_hits, "stage_seconds": on.stats.stage_seconds,
                "cache": store.stats(),
                "greedy_mismatches": [a.id for ra, rb in zip(got, expected) for a, b in zip(ra, rb)
                                      if a.token_ids != b.token_ids]}

    figures = {
        "model": args.size, "device": loaded.profile.describe(), "images": num_images,
        "questions": args.questions, "requests": num_requests,
        "off": {"seconds": off_s, "rows_per_s": num_requests / off_s, "cpu_seconds": off_cpu,
                "images_encoded": off.stats.num_images_encoded,
                "stage_seconds": off.stats.stage_seconds},
        **runs,
    }
    # CPU seconds (this process, all its threads) next to wall seconds: on a machine shared with other work the
    # wall clock measures the neighbours too.
    print(f"{'cache':<30}{'seconds':>9}{'rows/s':>9}{'ratio':>7}{'cpu s':>9}{'ratio':>7}{'encoded':>9}  hit rate")
    print(f"{'off':<30}{off_s:>9.2f}{num_requests / off_s:>9.2f}{1:>7.2f}{off_cpu:>9.2f}{1:>7.2f}"
          f"{off.stats.num_images_encoded:>9}")
    for name, label in [("on", "on (default budgets)"), ("on_tiered", "on (budgets spread over tiers)")]:
        r = runs[name]
        print(f"{label:<30}{r['seconds']:>9.2f}{r['rows_per_s']:>9.2f}{r['speedup_vs_off']:>7.2f}"
              f"{r['cpu_seconds']:>9.2f}{r['cpu_speedup_vs_off']:>7.2f}"
              f"{r['images_encoded']:>9}  {r['cache']['hit_rate']} (misses {r['cache']['misses']} of "
              f"{r['cache']['lookups']})")
    mismatches = runs["on"]["greedy_mismatches"] + runs["on_tiered"]["greedy_mismatches"]
    print("greedy outputs identical" if not mismatches else f"greedy outputs DIFFER for {mismatches}")
    return figures


def spread_store(folder: Path, llm: LLM, round_: list[dict]) -> TieredStore:
    """A store whose hot and warm tiers each hold about a third of one round's entries, cold the rest."""
    prepared = [llm.preprocessor.prepare(r) for r in round_]
    visual = llm.loaded.model.config.vision_config
    value_bytes = llm.loaded.profile.dtype.itemsize * visual.out_hidden_size * (
        1 + len(visual.deepstack_visual_indexes))
    total = sum(p.pixel_values.nbytes + p.num_image_patches // visual.spatial_merge_size**2 * value_bytes
                for p in prepared)
    return TieredStore(folder, hot_bytes=total // 3, warm_bytes=total // 3, cold_bytes=2 * total)


def weights_cache_figures(size: str) -> dict:
    """Seconds to load a bf16 folder for the CPU profile: plain, first through the cache, from the cache."""
    with tempfile.TemporaryDirectory(prefix="vlray-bench-weights-") as tmp:
        model_dir = write_bf16_model(size, Path(tmp) / "model")
        config = EngineConfig(model=str(model_dir), device_profile="cpu", cache_dir=str(Path(tmp) / "cache"))
        timings, checksums = {}, {}
        for name, cfg in [("plain_load", config.with_updates(cache_weights=False)),
                          ("first_load_convert_and_write", config), ("cached_load", config)]:
            gc.collect()
            start = time.perf_counter()
            loaded = load_model(cfg)
            timings[name] = time.perf_counter() - start
            checksums[name] = weights_checksum(loaded.model)
            del loaded
        figures = {"model": size, "source_dtype": "bfloat16", "target": "cpu float32", **timings,
                   "cached_vs_plain_speedup": timings["plain_load"] / timings["cached_load"],
                   "weights_equal": len(set(checksums.values())) == 1}
    print(f"weights ({size}, bf16 folder -> cpu float32): plain load {timings['plain_load']:.2f} s, first load "
          f"with the cache {timings['first_load_convert_and_write']:.2f} s, cached load "
          f"{timings['cached_load']:.2f} s ({figures['cached_vs_plain_speedup']:.2f}x); "
          f"weights {'equal' if figures['weights_equal'] else 'DIFFER'}")
    return figures


def write_bf16_model(size: str, out: Path) -> Path:
    """A Hugging Face folder in bf16: the tiny model, or the 2B config with random weights (about 4.3 GB)."""
    tiny = tiny_model_dir()
    processor = load_processor(tiny, 1024 * 1024)
    if size == "tiny":
        model = load_model(EngineConfig(model=str(tiny), device_profile="cpu", cache=False)).model
    else:
        model = build_model(two_b_config(processor.tokenizer), device="cpu", dtype=torch.bfloat16)
    model.to(torch.bfloat16).save_pretrained(out)
    processor.save_pretrained(out)
    del model
    return out


def weights_checksum(model: torch.nn.Module) -> int:
    """CRC-32 over every tensor's bytes, in state_dict order."""
    crc = 0
    for tensor in model.state_dict().values():
        crc = zlib.crc32(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy(), crc)
    return crc
