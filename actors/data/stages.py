"""The model-side stages of the batch job (preprocess, generate) as Ray Data UDFs, each with its map_batches
arguments declared next to it; parsing and the row format are in actors/data/parse.py.

A row that failed keeps flowing with its error result, so every input row reaches the output exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pyarrow as pa
import ray
from ray.actor import ActorHandle
from ray.data import ActorPoolStrategy

from actors.cache_client import CacheActorClient
from actors.data.parse import pack, unpack
from actors.metrics import VlrayMetrics
from vlray.config import EngineConfig
from vlray.engine.async_engine import AsyncEngine
from vlray.llm import LLM
from vlray.model.loader import load_preprocessor, set_cpu_threads
from vlray.schema import GenerationResult, RequestError, request_id_of

WINDOWS_IN_FLIGHT = 2


def incarnation_key() -> str:
    """This actor's id and a token of this life of it: a restarted actor keeps its id but starts from zero, and
    must not overwrite the totals its earlier life reported."""
    context = ray.get_runtime_context()
    return f"{context.get_actor_id()}/{uuid.uuid4().hex[:8]}"


# -- preprocess: CPU actors decode images, resize, apply the chat template, tokenize ----------------------

class PreprocessStage:
    """CPU actor: RequestPreprocessor over the rows that still need it."""

    def __init__(self, config: EngineConfig, collector: ActorHandle) -> None:
        # Through the job's CacheActor when caching is on: an image seen before is not decoded again.
        cache = CacheActorClient.of_config(config) if config.uses_preprocessed_cache else None
        self.preprocessor = load_preprocessor(config, image_cache=cache)
        self.collector = collector
        self.actor_key = incarnation_key()
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self.seconds = 0.0
        self.rows = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        rows = unpack(batch)
        ray.get(self.collector.begin.remote("preprocess", [row.source for row in rows]))
        for row in rows:
            if row.result is not None:
                continue
            try:
                row.prepared = self.preprocessor.prepare(row.request)
            except RequestError as exc:
                row.result = GenerationResult.failed(request_id_of(row.request), exc)
            except Exception as exc:  # one odd row must not fail the job
                row.result = GenerationResult.failed(request_id_of(row.request), f"internal error: {exc}")
            row.request = None  # images are in `prepared` now; do not ship them on
        self.seconds += time.perf_counter() - start
        self.rows += len(rows)
        self.collector.report.remote("preprocess", self.actor_key, {"seconds": self.seconds, "rows": self.rows,
                                                                    "restarted": self.restarted})
        return pack(rows)


def preprocess_stage_args(config: EngineConfig, collector: ActorHandle, num_workers: int,
                          actor_options: dict[str, Any]) -> dict[str, Any]:
    """`actor_options`: where the actors go (Placement.preprocess_options)."""
    return dict(fn_constructor_kwargs=dict(config=config, collector=collector),
                compute=ActorPoolStrategy(size=num_workers), batch_format="pyarrow", batch_size=8, num_cpus=0.5,
                **actor_options)


# -- generate: model actors (one per GPU, or CPU workers) generate windows of rows ---------------------------

class GenerateStage:
    """A ModelWorker as a Ray Data UDF. Each call is a window of rows; windows feed one AsyncEngine, and two are
    in flight per actor, so the next window's rows join the running batch (continuous batching) while the
    current window's last rows finish: the model does not drain between windows. Time with no window in
    the actor at all is the stage's wait (for preprocessing)."""

    def __init__(self, config: EngineConfig, collector: ActorHandle, window_rows: int) -> None:
        granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        set_cpu_threads(config.num_threads or max(1, int(granted)))
        cache = CacheActorClient.of_config(config) if config.uses_content_cache else None
        self.llm = LLM(config, cache=cache)
        # Ray Data bounds what is in flight (tasks per actor, and up to 4 batches per task for async UDFs);
        # the engine's queue only has to hold all of it.
        self.engine = AsyncEngine(self.llm.backend, self.llm.stats, config.max_batch_size,
                                  max_queued_requests=4 * WINDOWS_IN_FLIGHT * window_rows)
        self.collector = collector
        self.context = ray.get_runtime_context()
        self.actor_key = incarnation_key()
        self.restarted = self.context.was_current_actor_reconstructed
        self.metrics = VlrayMetrics("batch", config.model)
        self.busy_seconds = 0.0
        self.wait_seconds = 0.0
        self.rows = 0
        self._windows = 0
        self._busy_since = 0.0
        self._idle_since: float | None = None  # None until the first window: start-up is not waiting

    async def __call__(self, batch: pa.Table) -> pa.Table:
        self._window_starts()
        try:
            rows = unpack(batch)
            self.metrics.record_retried_rows("generate", await self.collector.begin.remote(
                "generate", [row.source for row in rows]))
            todo = [row for row in rows if row.result is None]
            self.metrics.record_errors(row.result.error_kind for row in rows if row.result is not None)
            results = await asyncio.gather(*(self.engine.generate(row.prepared) for row in todo))
            for row, result in zip(todo, results):
                row.result = result
            self.metrics.publish(self.llm.stats)
            for row in rows:
                row.prepared = None  # pixel patches stay here; only results travel to the writer
        finally:
            self._window_ends()
        self.rows += len(rows)
        self.collector.report.remote("generate", self.actor_key, {
            "stats": self.llm.stats, "busy_seconds": self.busy_seconds, "wait_seconds": self.wait_seconds,
            "rows": self.rows, "node_id": self.context.get_node_id(), "restarted": self.restarted})
        return pack(rows)

    def _window_starts(self) -> None:
        now = time.perf_counter()
        if self._windows == 0:
            if self._idle_since is not None:
                self.wait_seconds += now - self._idle_since
            self._busy_since = now
        self._windows += 1

    def _window_ends(self) -> None:
        self._windows -= 1
        if self._windows == 0:
            now = time.perf_counter()
            self.busy_seconds += now - self._busy_since
            self._idle_since = now


def generate_stage_args(config: EngineConfig, collector: ActorHandle, num_workers: int,
                        actor_options: dict[str, Any], window_rows: int) -> dict[str, Any]:
    """Two windows in flight per actor, both running (the actor is async): one fills the engine as the other
    drains.

    `actor_options`: resources and node choice of a model actor (Placement.model_options)."""
    return dict(fn_constructor_kwargs=dict(config=config, collector=collector, window_rows=window_rows),
                compute=ActorPoolStrategy(size=num_workers, max_tasks_in_flight_per_actor=WINDOWS_IN_FLIGHT,
                                          max_concurrent_calls_per_actor=WINDOWS_IN_FLIGHT),
                batch_format="pyarrow", batch_size=window_rows, **actor_options)
