"""Progress while the batch job runs, and its statistics at the end (a short table and a JSON file)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from vlray.schema import GenerationResult
from vlray.stats import PipelineStats


class Progress:
    """A tqdm bar (rows/s, ETA) on a terminal; a plain log line every `log_every` seconds otherwise."""

    def __init__(self, total: int, log_every: float = 10.0) -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.log_every = log_every
        self._last_log = self.start
        self.bar = tqdm(total=total, unit="row", dynamic_ncols=True) if sys.stderr.isatty() else None

    def update(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every:
            self._last_log = now
            rate = self.done / (now - self.start)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            print(f"[vlray batch] {self.done}/{self.total} rows, {rate:.2f} rows/s, ETA {eta:.0f} s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ResultTally:
    """Counts of the results the driver received."""

    def __init__(self) -> None:
        self.rows_ok = 0
        self.rows_failed = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.errors_by_kind: Counter = Counter()
        self.first_result_time: float | None = None  # perf_counter() when the first result came

    def add(self, result: GenerationResult) -> None:
        if self.first_result_time is None:
            self.first_result_time = time.perf_counter()
        if result.ok:
            self.rows_ok += 1
            self.prompt_tokens += result.num_prompt_tokens
            self.generated_tokens += result.num_generated_tokens
        else:
            self.rows_failed += 1
            self.errors_by_kind[result.error_kind or "internal"] += 1


def job_stats(tally: ResultTally, stage_reports: dict[str, list[Any]], registry_counts: dict[str, int],
              wall_seconds: float, write_seconds: float, num_shards: int,
              retries: dict[str, dict[str, int]], seconds_to_first_result: float) -> dict[str, Any]:
    """The stats JSON: rows, tokens, throughput, padding, seconds per stage, generate-stage wait fraction,
    the work done again after a lost actor or node (`retries`, per actor stage), and the seconds until the first
    result (actors started, models loaded: what a longer job amortises)."""
    generation = PipelineStats()
    for report in stage_reports.get("generate", []):
        generation = generation.merge(report["stats"])
    busy = sum(r["busy_seconds"] for r in stage_reports.get("generate", []))
    waited = sum(r["wait_seconds"] for r in stage_reports.get("generate", []))
    rows = tally.rows_ok + tally.rows_failed
    return {
        "rows": rows,
        "rows_ok": tally.rows_ok,
        "rows_failed": tally.rows_failed,
        "rows_skipped_already_done": registry_counts.get("skipped", 0),
        "prompt_tokens": tally.prompt_tokens,
        "generated_tokens": tally.generated_tokens,
        "wall_seconds": round(wall_seconds, 3),
        "seconds_to_first_result": round(seconds_to_first_result, 3),
        "rows_per_second": round(rows / wall_seconds, 3) if wall_seconds else 0.0,
        "generated_tokens_per_second": round(tally.generated_tokens / wall_seconds, 3) if wall_seconds else 0.0,
        "padding_fraction": round(generation.padding_fraction, 4),
        "num_model_batches": generation.num_batches,
        "images": generation.num_images,
        "images_encoded": generation.num_images_encoded,
        "prefix_cached_tokens": generation.num_prefix_cached_tokens,
        "stage_seconds": {
            "preprocess": round(sum(r["seconds"] for r in stage_reports.get("preprocess", [])), 3),
            **{k: round(generation.stage_seconds.get(k, 0.0), 3) for k in ("load", "transfer", "encode",
                                                                            "compute", "postprocess")},
            "write": round(write_seconds, 3),
        },
        "generate_wait_fraction": round(waited / (waited + busy), 4) if busy + waited else 0.0,
        "errors_by_kind": dict(tally.errors_by_kind),
        "generate_workers": [{"node_id": r["node_id"], "rows": r["rows"], "restarted": r.get("restarted", False),
                              "busy_seconds": round(r["busy_seconds"], 3), "wait_seconds": round(r["wait_seconds"], 3)}
                             for r in stage_reports.get("generate", [])],
        "retries": {stage: {**retries.get(stage, {"windows": 0, "rows": 0}),
                            "actor_restarts": sum(1 for r in stage_reports.get(stage, []) if r.get("restarted"))}
                    for stage in ("preprocess", "generate")},
        "output_shards": num_shards,
    }


def generating_seconds(stats: dict[str, Any]) -> float:
    """The job's generating phase, without the start-up before it (worker processes, model loads): each model
    actor is busy or waiting from its first window to its last, and the longest of those spans is the phase."""
    return max((w["busy_seconds"] + w["wait_seconds"] for w in stats["generate_workers"]), default=0.0)


def print_summary(stats: dict[str, Any], console: Console | None = None) -> None:
    """A short table of the figures that matter, and the errors by kind."""
    console = console or Console()
    table = Table(title="vlray batch job", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for label, key in [("rows ok", "rows_ok"), ("rows failed", "rows_failed"),
                       ("rows skipped (done before)", "rows_skipped_already_done"),
                       ("prompt tokens", "prompt_tokens"), ("generated tokens", "generated_tokens"),
                       ("rows/s", "rows_per_second"), ("generated tokens/s", "generated_tokens_per_second"),
                       ("padding fraction", "padding_fraction"), ("generate wait fraction", "generate_wait_fraction"),
                       ("images / encoded", "images"),
                       ("wall seconds", "wall_seconds"), ("seconds to first result", "seconds_to_first_result")]:
        value = f"{stats['images']} / {stats['images_encoded']}" if key == "images" else str(stats[key])
        table.add_row(label, value)
    for stage, seconds in stats["stage_seconds"].items():
        table.add_row(f"{stage} seconds", str(seconds))
    cache = stats.get("cache")
    if cache:
        hits = ", ".join(f"{tier} {count}" for tier, count in cache["hits"].items())
        table.add_row("cache hits (per tier) / misses", f"{hits} / {cache['misses']}")
    console.print(table)
    retried = {stage: r for stage, r in stats["retries"].items() if r["rows"] or r["actor_restarts"]}
    if retried:
        console.print("done again after a lost actor or node: " + ", ".join(
            f"{stage}: {r['rows']} rows in {r['windows']} windows, {r['actor_restarts']} actor restarts"
            for stage, r in retried.items()))
    if stats["errors_by_kind"]:
        errors = ", ".join(f"{kind}: {count}" for kind, count in sorted(stats["errors_by_kind"].items()))
        console.print(f"errors by kind: {errors}")
