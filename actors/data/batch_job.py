"""python -m jobs.batch --model M --input I --output O: Qwen3-VL over a table of prompts or a folder of images.

Works the same under `ray job submit --working-dir . -- python -m jobs.batch ...` (it joins the cluster) and
alone (Ray starts an embedded local instance). Rows stream through Ray Data: parse -> preprocess on CPU
actors -> bucket and generate on model actors -> Parquet shards committed atomically in O. Running the same
command again resumes: rows already committed are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import ray  # noqa: E402
from ray.data import DataContext  # noqa: E402

from actors.cache_actor import get_or_create_cache_actor  # noqa: E402
from actors.data.id_registry import IdRegistry  # noqa: E402
from actors.data.parse import parse_rows, parse_stage_args, unpack  # noqa: E402
from actors.data.stages import GenerateStage, PreprocessStage, generate_stage_args, preprocess_stage_args  # noqa: E402
from actors.data.stats_collector import StatsCollector  # noqa: E402
from actors.autoscaler import DEFAULT_SCALE_TIMEOUT_S, NotEnoughGpusError  # noqa: E402
from actors.placement import place_model_workers  # noqa: E402
from actors.data.read_input import read_input  # noqa: E402
from vlray.batch.inputs import InputError, count_input_rows, input_kind_of  # noqa: E402
from vlray.batch.report import Progress, ResultTally, job_stats, print_summary  # noqa: E402
from vlray.batch.shard_writer import OutputNotWritableError, ShardWriter, check_output_writable, read_committed  # noqa: E402
from vlray.config import DEFAULT_MAX_PIXELS, EngineConfig  # noqa: E402
from vlray.model.source import ModelNotFoundError, resolve_model_dir  # noqa: E402

# Rows per block between stages: a preprocess task's work, and the grain in which a window is gathered.
BLOCK_ROWS = 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder or hub id in the local Hugging Face cache")
    p.add_argument("--input", required=True, help=".jsonl or .parquet file, a folder of them, or a folder of images")
    p.add_argument("--output", required=True, help="folder for the output Parquet shards (resumes if it has some)")
    p.add_argument("--prompt", default=None, help="prompt of rows that carry none (every image of a folder)")
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens of rows that set no max_tokens")
    p.add_argument("--temperature", type=float, default=None, help="temperature of rows that set none (0: greedy)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="token budget of one model batch")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="cap on an image's pixels")
    p.add_argument("--num-workers", type=int, default=1, help="model actors (one per GPU)")
    p.add_argument("--scale-timeout", type=float, default=DEFAULT_SCALE_TIMEOUT_S,
                   help="seconds to wait for an autoscaler's new GPU nodes when --num-workers exceeds the GPUs alive")
    p.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs per model actor on CPU-only clusters")
    p.add_argument("--preprocess-workers", type=int, default=1, help="CPU actors that preprocess rows")
    p.add_argument("--window-rows", type=int, default=128, help="rows a model actor buckets together")
    p.add_argument("--backend", default="engine", choices=["engine", "hf"],
                   help="engine: continuous batching (default); hf: static batches through transformers generate")
    p.add_argument("--no-bucketing", action="store_true",
                   help="hf backend: batch rows in input order instead of by kind and length (for comparison)")
    p.add_argument("--device-profile", default="auto", choices=["auto", "cpu", "sm61", "modern"])
    p.add_argument("--quantization", default="none", choices=["none", "int8", "int4"],
                   help="text decoder and LM head: int8 (CPU; CUDA sm75+) or int4 (CPU; NF4 on CUDA, Pascal too)")
    p.add_argument("--vision-quantization", default="none", choices=["none", "int8"], help="vision tower (CPU)")
    p.add_argument("--cache-dir", default=None, help="folder of the cache's disk tiers and converted weights "
                   "(default: $VLRAY_CACHE_DIR or ~/.cache/vlray)")
    p.add_argument("--no-cache", action="store_true", help="no image, encoder-output or weights caches")
    p.add_argument("--limit", type=int, default=None, help="only the first N input rows")
    p.add_argument("--rows-per-shard", type=int, default=1000, help="rows per committed output shard")
    p.add_argument("--shard-seconds", type=float, default=60.0, help="commit a shard at least this often")
    p.add_argument("--stats", default=None, help="write the stats JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    input_path, output_path = Path(args.input).expanduser(), Path(args.output).expanduser()
    # Everything that can be wrong with the command fails here, before Ray starts or a model loads.
    try:
        kind = input_kind_of(input_path)
        check_output_writable(output_path)
        config = EngineConfig(model=args.model, backend=args.backend, device_profile=args.device_profile,
                              max_pixels=args.max_pixels, default_max_tokens=args.max_tokens,
                              max_batch_tokens=args.batch_tokens, bucket_static_batches=not args.no_bucketing,
                              cache=not args.no_cache, cache_dir=args.cache_dir, quantization=args.quantization,
                              vision_quantization=args.vision_quantization)
        resolve_model_dir(config.model)
    except (InputError, OutputNotWritableError, ModelNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(log_to_driver=False)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = False
    try:
        stats = run_job(args, config, kind, input_path, output_path)
    except NotEnoughGpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if started_ray:
            ray.shutdown()
    print_summary(stats)
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=2))
    return 0


def run_job(args: argparse.Namespace, config: EngineConfig, kind: str, input_path: Path,
            output_path: Path) -> dict:
    """Compose the stages, stream results into shards, and return the job's stats."""
    start = time.perf_counter()
    done_ids, done_sources = read_committed(output_path)
    placement, resources = place_model_workers(args.num_workers, config, args.worker_cpus,
                                               scale_timeout_s=args.scale_timeout)
    registry = IdRegistry.options(**placement.control_options()).remote(done_ids, done_sources)
    collector = StatsCollector.options(**placement.control_options()).remote()
    cache_actor = (get_or_create_cache_actor(config, placement.cache_options()) if config.uses_content_cache
                   else None)
    defaults = {"prompt": args.prompt, "temperature": args.temperature}

    # Small blocks (see read_input): a block is what flows from stage to stage, so small ones spread rows over
    # the preprocess actors and stream results to the writer while the job runs.
    block_rows = min(BLOCK_ROWS, args.window_rows)
    total = count_input_rows(input_path, kind)
    dataset = read_input(input_path, kind, rows_per_block=block_rows, total_rows=total)
    if args.limit is not None:
        dataset = dataset.limit(args.limit)
    dataset = dataset.map_batches(parse_rows, **parse_stage_args(kind, str(input_path), defaults, registry,
                                                                 block_rows))
    dataset = dataset.map_batches(PreprocessStage, **preprocess_stage_args(
        config, collector, args.preprocess_workers, placement.preprocess_options()))
    dataset = dataset.map_batches(GenerateStage, **generate_stage_args(
        config, collector, args.num_workers, placement.model_options(resources), args.window_rows))

    total = min(total, args.limit) if args.limit is not None else total
    progress = Progress(max(0, total - len(done_sources)))
    writer = ShardWriter(output_path, args.rows_per_shard, args.shard_seconds)
    tally = ResultTally()
    write_seconds = 0.0
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        rows = unpack(batch)
        write_start = time.perf_counter()
        writer.add([row.output_row() for row in rows])
        write_seconds += time.perf_counter() - write_start
        for row in rows:
            tally.add(row.result)
        progress.update(len(rows))
    writer.flush()
    progress.close()
    wall = time.perf_counter() - start
    stats = job_stats(tally, ray.get(collector.collect.remote()), ray.get(registry.counts.remote()), wall,
                      write_seconds, writer.num_shards, ray.get(collector.retries.remote()),
                      tally.first_result_time - start if tally.first_result_time is not None else wall)
    stats["cache"] = ray.get(cache_actor.stats.remote()) if cache_actor is not None else None
    return stats


if __name__ == "__main__":
    sys.exit(main())
