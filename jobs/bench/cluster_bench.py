"""The batch job on one and on two simulated model nodes, same workload, same run: rows/s of each and the ratio.

Each configuration gets a fresh simulated cluster (jobs/bench/simulated_cluster.py: a head that preprocesses,
and model nodes of `--worker-cpus` CPUs, each holding one model actor). Rows/s are given over the job's whole wall
(actor start and model load included) and while generating (from the model actors' first window to their last:
what a long job sees). Simulated nodes share this machine's cores: where it has fewer than they are given, the
ratio shows that contention as much as scale-out; the wait fraction says whether the model actors were fed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from jobs.bench.batch_bench import run_job, write_workload
from jobs.bench.bench_models import tiny_model_dir
from jobs.bench.simulated_cluster import simulated_cluster
from vlray.batch.report import generating_seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=200, help="rows in the workload (mixed images and text)")
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per row")
    parser.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs of a model node (one model actor)")
    parser.add_argument("--head-cpus", type=float, default=1.0, help="CPUs of the head, which preprocesses")
    parser.add_argument("--preprocess-workers", type=int, default=1)
    parser.add_argument("--window-rows", type=int, default=16)
    parser.add_argument("--object-store-mib", type=int, default=1024, help="object store of each simulated node")
    parser.add_argument("--json", default=None, help="also write the figures to this file")


def _figures(stats: dict) -> dict:
    generating = generating_seconds(stats)
    return {
        "rows_per_s": stats["rows_per_second"],
        "rows_per_s_generating": stats["rows"] / generating if generating > 0 else 0.0,
        "wall_seconds": stats["wall_seconds"],
        "generating_seconds": generating,
        "seconds_to_first_result": stats["seconds_to_first_result"],
        "rows_per_model_node": sorted(w["rows"] for w in stats["generate_workers"]),
        "generate_wait_fraction": stats["generate_wait_fraction"],
        "stage_seconds": stats["stage_seconds"],
    }


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="vlray-bench-cluster-"))
    model = tiny_model_dir(work)
    rows_path = write_workload(work, args.rows, args.max_tokens)
    print(f"{args.rows} rows of the mixed workload, {args.max_tokens} new tokens each; model nodes of "
          f"{args.worker_cpus:g} CPU, a head of {args.head_cpus:g} CPU preprocessing; {os.cpu_count()} cores here")
    runs = {}
    for num_nodes in (1, 2):
        with simulated_cluster(num_nodes, args.worker_cpus, head_cpus=args.head_cpus,
                               object_store_bytes=args.object_store_mib << 20):
            stats = run_job(model, rows_path, work / f"out-{num_nodes}", args, "--num-workers", str(num_nodes))
        runs[num_nodes] = _figures(stats)
    one, two = runs[1], runs[2]
    figures = {
        "rows": args.rows,
        "one_model_node": one,
        "two_model_nodes": two,
        "ratio": two["rows_per_s"] / one["rows_per_s"],
        "ratio_generating": two["rows_per_s_generating"] / one["rows_per_s_generating"],
    }
    print(f"{'model nodes':<13}{'rows/s':>8}{'wall s':>8}{'rows/s generating':>19}{'generating s':>14}{'wait':>6}"
          "  rows per node")
    for name, run_figures in (("1", one), ("2", two)):
        print(f"{name:<13}{run_figures['rows_per_s']:>8.2f}{run_figures['wall_seconds']:>8.1f}"
              f"{run_figures['rows_per_s_generating']:>19.2f}{run_figures['generating_seconds']:>14.1f}"
              f"{run_figures['generate_wait_fraction']:>6.2f}  {run_figures['rows_per_model_node']}")
    print(f"two nodes over one: {figures['ratio']:.2f}x over the whole job (start-up included), "
          f"{figures['ratio_generating']:.2f}x while generating")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures
