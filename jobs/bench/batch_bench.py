"""The batch job against plain transformers generate, one row at a time, on the same rows.

A mixed workload (images from 64x64 to 1024x768, text-only rows, prompts of different lengths) is written
to a JSONL file with its images; (a) runs every row through `generate` alone in this process, (b) runs
`python -m jobs.batch` on it (in this process, on a local Ray), with length bucketing and again in input
order. Prints rows/s and the ratio, the padding fractions, and the generate stage's wait fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray

from jobs import batch
from jobs.bench.bench_models import set_threads, tiny_model_dir
from jobs.bench.workloads import mixed_workload
from vlray.batch.report import generating_seconds
from vlray.config import EngineConfig
from vlray.model.loader import load_model
from vlray.testing.reference import reference_generate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=240, help="rows in the workload")
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens per row")
    parser.add_argument("--worker-cpus", type=float, default=2.0, help="CPUs of the job's model actor")
    parser.add_argument("--preprocess-workers", type=int, default=1)
    parser.add_argument("--window-rows", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the one-at-a-time baseline")
    parser.add_argument("--json", default=None, help="also write the figures to this file")


def write_workload(folder: Path, rows: int, max_tokens: int) -> Path:
    """The mixed workload as JSONL, its images saved as PNG files beside it."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    path = folder / "rows.jsonl"
    with open(path, "w") as f:
        for request in mixed_workload(rows, max_tokens, seed=1):
            paths = []
            for n, image in enumerate(request.pop("images", [])):
                paths.append(str(images / f"{request['id']}-{n}.png"))
                image.save(paths[-1])
            f.write(json.dumps({**request, "images": paths} if paths else request) + "\n")
    return path


def run_job(model: Path, rows_path: Path, out: Path, args: argparse.Namespace, *extra: str) -> dict:
    stats_path = out.parent / f"{out.name}.stats.json"
    code = batch.main(["--model", str(model), "--input", str(rows_path), "--output", str(out),
                       "--max-tokens", str(args.max_tokens), "--worker-cpus", str(args.worker_cpus),
                       "--preprocess-workers", str(args.preprocess_workers), "--window-rows", str(args.window_rows),
                       "--device-profile", "cpu", "--stats", str(stats_path), *extra])
    if code != 0:
        raise RuntimeError(f"batch job failed with exit code {code}")
    return json.loads(stats_path.read_text())


def run(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vlray-bench-batch-"))
    model = tiny_model_dir(work)
    rows_path = write_workload(work, args.rows, args.max_tokens)
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    print(f"{len(rows)} rows ({sum('images' in r for r in rows)} with an image), {args.max_tokens} new tokens each")

    loaded = load_model(EngineConfig(model=str(model), device_profile="cpu"))
    reference_generate(loaded, rows[0], args.max_tokens)  # warm-up
    start = time.perf_counter()
    reference = {r["id"]: reference_generate(loaded, r, args.max_tokens) for r in rows}
    baseline_s = time.perf_counter() - start

    # Logical CPUs beyond the physical ones: the model actor gets its threads while preprocessing overlaps.
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    try:
        engine = run_job(model, rows_path, work / "out-engine", args)
        bucketed = run_job(model, rows_path, work / "out-bucketed", args, "--backend", "hf")
        in_order = run_job(model, rows_path, work / "out-in-order", args, "--backend", "hf", "--no-bucketing")
    finally:
        ray.shutdown()

    out = pd.read_parquet(work / "out-engine").set_index("id")
    tokenizer = loaded.tokenizer
    mismatches = [i for i, ids in reference.items()
                  if out.loc[i, "text"] != tokenizer.decode(ids, skip_special_tokens=True)]
    baseline = len(rows) / baseline_s
    figures = {
        "rows": len(rows),
        "one_at_a_time_rows_per_s": baseline,
        "job_rows_per_s": engine["rows_per_second"],
        "job_hf_bucketed_rows_per_s": bucketed["rows_per_second"],
        "job_hf_input_order_rows_per_s": in_order["rows_per_second"],
        "speedup": engine["rows_per_second"] / baseline,
        "padding_fraction_bucketed": bucketed["padding_fraction"],
        "padding_fraction_input_order": in_order["padding_fraction"],
        "generate_wait_fraction": engine["generate_wait_fraction"],
        "generate_wait_fraction_hf": bucketed["generate_wait_fraction"],
        "job_stage_seconds": engine["stage_seconds"],
        "job_wall_seconds": engine["wall_seconds"],
        "greedy_text_mismatches": mismatches,
    }
    print(f"{'path':<48}{'rows/s':>10}{'ratio':>8}")
    for label, key in [("plain generate, one row at a time", "one_at_a_time_rows_per_s"),
                       ("batch job, engine (continuous batching)", "job_rows_per_s"),
                       ("batch job, hf static batches, bucketed", "job_hf_bucketed_rows_per_s"),
                       ("batch job, hf static batches, input order", "job_hf_input_order_rows_per_s")]:
        print(f"{label:<48}{figures[key]:>10.2f}{figures[key] / baseline:>7.2f}x")
    print(f"(job walls include Ray, actor start and model load: engine job {engine['wall_seconds']:.1f} s)")
    for label, stats in [("engine", engine), ("hf bucketed", bucketed), ("hf input order", in_order)]:
        # Start-up is a fixed cost a long job amortises; this is the rate once the model actor has rows.
        seconds = generating_seconds(stats)
        figures[f"generating_rows_per_s_{label}"] = stats["rows"] / seconds if seconds > 0 else 0.0
    print("while generating (first window to last, no start-up), rows/s: " + ", ".join(
        f"{label} {figures[f'generating_rows_per_s_{label}']:.2f} "
        f"({figures[f'generating_rows_per_s_{label}'] / baseline:.2f}x)"
        for label in ("engine", "hf bucketed", "hf input order")))
    print(f"padding fraction of hf static batches: bucketed {figures['padding_fraction_bucketed']:.3f}, "
          f"input order {figures['padding_fraction_input_order']:.3f}")
    print(f"generate stage wait fraction: engine {figures['generate_wait_fraction']:.3f}, "
          f"hf {figures['generate_wait_fraction_hf']:.3f}")
    print("greedy texts identical" if not mismatches else f"greedy texts DIFFER for {mismatches}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures
