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

from actors.cache_actor import CacheActorConfig, get_or_create_cache_actor  # noqa: E402
from actors.data.id_registry import IdRegistry  # noqa: E402
from actors.data.parse import parse_rows, parse_stage_args  # noqa: E402
from actors.data.stages import GenerateStage, PreprocessStage, generate_stage_args, preprocess_stage_args  # noqa: E402
from actors.data.stats_collector import StatsCollector  # noqa: E402
from actors.autoscaler import DEFAULT_SCALE_TIMEOUT_S, NotEnoughGpusError  # noqa: E402
from actors.placement import place_model_workers  # noqa: E402
from actors.data.read_input import read_input_parts  # noqa: E402
from vlray.batch.inputs import InputError, count_input_rows, input_kind_of  # noqa: E402
from vlray.batch.row_table import table_to_rows  # noqa: E402
from vlray.batch.report import Progress, ResultTally, job_stats, print_summary  # noqa: E402
from vlray.batch.shard_writer import (OutputNotWritableError, OutputWriteError, ShardWriter, check_output_writable,  # noqa: E402
                                      drop_retryable_rows, read_committed)
from vlray.config import EngineConfig  # noqa: E402
from vlray.config_fields import HelpFormatter, add_config_arguments, config_from_namespace  # noqa: E402
from vlray.model.source import ModelNotFoundError, resolve_model_dir  # noqa: E402

# Rows per block between stages: a preprocess task's work, and the grain in which a window is gathered.
BLOCK_ROWS = 16


# Flag spellings the job had before its engine flags were derived from EngineConfig; both work.
ENGINE_FLAG_ALIASES = {"default_max_tokens": ["--max-tokens"], "max_batch_tokens": ["--batch-tokens"]}
CACHE_ACTOR_PREFIX = "cache_actor_"


def parse_args(argv: list[str] | None, prog: str = "python -m jobs.batch") -> argparse.Namespace:
    """The job's own flags, then one per EngineConfig field and one per CacheActorConfig field (derived)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    job = p.add_argument_group("the job")
    job.add_argument("--input", required=True, help=".jsonl or .parquet file, a folder of them, or a folder of images")
    job.add_argument("--output", required=True, help="folder for the output Parquet shards (resumes if it has some)")
    job.add_argument("--prompt", default=None, help="prompt of rows that carry none (every image of a folder)")
    job.add_argument("--temperature", type=float, default=None, help="temperature of rows that set none (0: greedy)")
    job.add_argument("--num-workers", type=int, default=1, help="model actors (one per GPU)")
    job.add_argument("--scale-timeout", type=float, default=DEFAULT_SCALE_TIMEOUT_S,
                     help="seconds to wait for an autoscaler's new GPU nodes when --num-workers exceeds the GPUs alive")
    job.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs per model actor on CPU-only clusters")
    job.add_argument("--preprocess-workers", type=int, default=1, help="CPU actors that preprocess rows")
    job.add_argument("--window-rows", type=int, default=128, help="rows a model actor buckets together")
    job.add_argument("--no-bucketing", action="store_true",
                     help="hf backend: batch rows in input order instead of by kind and length (same as --no-bucket-static-batches)")
    job.add_argument("--limit", type=int, default=None, help="only the first N input rows")
    job.add_argument("--rows-per-shard", type=int, default=1000, help="rows per committed output shard")
    job.add_argument("--shard-seconds", type=float, default=60.0, help="commit a shard at least this often")
    job.add_argument("--stats", default=None, help="write the stats JSON here")
    add_config_arguments(p.add_argument_group("engine (EngineConfig, vlray/config.py)"), EngineConfig,
                         aliases=ENGINE_FLAG_ALIASES)
    add_config_arguments(p.add_argument_group("cache actor (CacheActorConfig, actors/cache_actor.py)"),
                         CacheActorConfig, prefix=CACHE_ACTOR_PREFIX)
    return p.parse_args(argv)


def configs_of(args: argparse.Namespace) -> tuple[EngineConfig, CacheActorConfig]:
    """The engine's and the cache actor's configs the flags give (ValueError says what is wrong)."""
    config = config_from_namespace(EngineConfig, args)
    if args.no_bucketing:  # the job's older spelling of --no-bucket-static-batches
        config = config.with_updates(bucket_static_batches=False)
    return config, config_from_namespace(CacheActorConfig, args, prefix=CACHE_ACTOR_PREFIX)


def main(argv: list[str] | None = None, prog: str = "python -m jobs.batch") -> int:
    args = parse_args(argv, prog)
    input_path, output_path = Path(args.input).expanduser(), Path(args.output).expanduser()
    # Everything that can be wrong with the command fails here, before Ray starts or a model loads.
    try:
        kind = input_kind_of(input_path)
        total_rows = count_input_rows(input_path, kind)  # every file and Parquet footer, before Ray or a model
        check_output_writable(output_path)
        config, cache_actor = configs_of(args)
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
        stats = run_job(args, config, cache_actor, kind, input_path, output_path, total_rows)
    except OutputWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
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


def run_job(args: argparse.Namespace, config: EngineConfig, cache_actor_config: CacheActorConfig, kind: str,
            input_path: Path, output_path: Path, total_rows: int | None = None) -> dict:
    """Compose the stages, stream results into shards, and return the job's stats."""
    start = time.perf_counter()
    drop_retryable_rows(output_path)  # rows that failed beside others are run again
    done_ids, done_sources = read_committed(output_path)
    placement, resources = place_model_workers(args.num_workers, config, args.worker_cpus,
                                               scale_timeout_s=args.scale_timeout)
    registry = IdRegistry.options(**placement.control_options()).remote(done_ids, done_sources)
    collector = StatsCollector.options(**placement.control_options()).remote()
    cache_actor = (get_or_create_cache_actor(config, placement.cache_options(), cache_actor_config)
                   if config.uses_content_cache else None)
    defaults = {"prompt": args.prompt, "temperature": args.temperature}

    # Small blocks (see read_input): a block is what flows from stage to stage, so small ones spread rows over
    # the preprocess actors and stream results to the writer while the job runs.
    block_rows = min(BLOCK_ROWS, args.window_rows)
    total = total_rows if total_rows is not None else count_input_rows(input_path, kind)
    parts = []
    for part_kind, part in read_input_parts(input_path, kind, rows_per_block=block_rows, total_rows=total):
        if args.limit is not None:
            part = part.limit(args.limit)
        parts.append(part.map_batches(parse_rows, **parse_stage_args(part_kind, str(input_path), defaults,
                                                                      registry, block_rows)))
    dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if args.limit is not None and len(parts) > 1:
        dataset = dataset.limit(args.limit)
    dataset = dataset.map_batches(PreprocessStage, **preprocess_stage_args(
        config, collector, args.preprocess_workers, placement.preprocess_options(), cache_actor_config))
    dataset = dataset.map_batches(GenerateStage, **generate_stage_args(
        config, collector, args.num_workers, placement.model_options(resources), args.window_rows,
        cache_actor_config))

    total = min(total, args.limit) if args.limit is not None else total
    progress = Progress(max(0, total - len(done_sources)))
    writer = ShardWriter(output_path, args.rows_per_shard, args.shard_seconds)
    tally = ResultTally()
    write_seconds = 0.0
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        rows = table_to_rows(batch, with_extra=True)
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
