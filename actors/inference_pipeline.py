"""InferencePipeline: the Python API for programs that would rather not touch actors."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import ray

from actors.placement import PlacementConfig
from actors.worker_factory import create_model_workers, fan_out_generate, split_evenly
from vlray.config import EngineConfig
from vlray.engine.token_stream import StreamDelta
from vlray.schema import GenerationRequest, GenerationResult
from vlray.stats import PipelineStats


class InferencePipeline:
    """`InferencePipeline(config).run(requests)` -> results in order; `.stats()` for what it did.

    Starts Ray if it is not running (a local instance, or the cluster RAY_ADDRESS names), creates the
    ModelWorkers (one per GPU, spread over nodes: actors/placement.py), and splits each run's requests over them.
    """

    def __init__(self, config: EngineConfig, num_workers: int = 1, num_cpus_per_worker: float | None = None,
                 ray_address: str | None = None, placement: PlacementConfig | None = None) -> None:
        if not ray.is_initialized():
            ray.init(address=ray_address, log_to_driver=False)
        self.config = config
        self.workers = create_model_workers(config, num_workers, num_cpus_per_worker, placement)
        self._wall_seconds = 0.0

    def run(self, requests: Sequence[GenerationRequest | dict[str, Any]]) -> list[GenerationResult]:
        """Generate for every request; bad ones come back as error results, never as exceptions."""
        start = time.perf_counter()
        try:
            return fan_out_generate(self.workers, list(requests))
        finally:
            self._wall_seconds += time.perf_counter() - start

    def stream(self, requests: Sequence[GenerationRequest | dict[str, Any]]
               ) -> Iterator[StreamDelta | GenerationResult]:
        """Deltas as they are made and each request's result as it ends, from all workers as they come."""
        start = time.perf_counter()
        try:
            streams = [w.stream.remote(part) for w, part in zip(self.workers, split_evenly(list(requests),
                                                                                         len(self.workers)))]
            while streams:
                [ready], _ = ray.wait(streams, num_returns=1)
                try:
                    yield ray.get(next(ready))
                except StopIteration:
                    streams.remove(ready)
        finally:
            self._wall_seconds += time.perf_counter() - start

    def stats(self) -> dict[str, Any]:
        """Rows, tokens, padding, seconds per stage (summed over workers) and throughput over run() time."""
        merged = PipelineStats()
        for worker_stats in ray.get([w.stats.remote() for w in self.workers]):
            merged = merged.merge(worker_stats)
        merged.wall_seconds = self._wall_seconds
        return {**merged.to_dict(), "cache": self.cache_stats()}

    def cache_stats(self) -> dict[str, Any] | None:
        """The shared CacheActor's stats (hits and misses per tier, bytes, evictions); None when caching is off."""
        return ray.get(self.workers[0].cache_stats.remote()) if self.workers else None

    def worker_info(self) -> list[dict[str, Any]]:
        return ray.get([w.info.remote() for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []

    def __enter__(self) -> "InferencePipeline":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
