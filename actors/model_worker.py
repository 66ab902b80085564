"""ModelWorker: a Ray actor that holds the model on its device and answers generate calls."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import ray

from actors.cache_client import CacheActorClient
from actors.metrics import VlrayMetrics
from vlray.config import EngineConfig
from vlray.engine.token_stream import StreamDelta
from vlray.llm import LLM
from vlray.model.loader import set_cpu_threads
from vlray.schema import GenerationRequest, GenerationResult
from vlray.stats import PipelineStats


@ray.remote
class ModelWorker:
    """Loads the model once, then serves `generate(requests)` calls; one per GPU (or a CPU worker)."""

    def __init__(self, config: EngineConfig) -> None:
        # Ray sets OMP_NUM_THREADS=1 in workers; unless told otherwise, use the CPUs this actor was granted.
        granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        set_cpu_threads(config.num_threads or max(1, int(granted)))
        self.config = config
        # The shared CacheActor when one runs (the worker factory starts it); else a store in this worker.
        self.cache_client = None
        if config.uses_content_cache:
            self.cache_client = CacheActorClient.of_config(config)
        self.llm = LLM(config, cache=self.cache_client)
        self.metrics = VlrayMetrics("pipeline", config.model)

    def generate(self, requests: list[GenerationRequest | dict[str, Any]]) -> list[GenerationResult]:
        """One result per request, in order; bad requests come back as error results."""
        results = self.llm.generate(requests)
        self.metrics.publish(self.llm.stats)
        return results

    @ray.method(num_returns="streaming")
    def stream(self, requests: list[GenerationRequest | dict[str, Any]]) -> Iterator[StreamDelta | GenerationResult]:
        """Text deltas as they are made and each result as its request ends: `for ref in worker.stream.remote(r)`."""
        for event in self.llm.stream(requests):  # not `yield from`: Ray resumes with send(), lists lack it
            yield event
        self.metrics.publish(self.llm.stats)

    def stats(self) -> PipelineStats:
        return self.llm.stats

    def reset_stats(self) -> PipelineStats:
        return self.llm.reset_stats()

    def cache_stats(self) -> dict[str, Any] | None:
        """Stats of the cache this worker uses (the CacheActor's, or its own store's); None without one."""
        if self.cache_client is not None:
            return self.cache_client.stats()
        cache = self.llm.cache
        return cache.stats() if cache is not None else None

    def info(self) -> dict[str, Any]:
        """Where and how this worker runs."""
        loaded = self.llm.loaded
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "backend": self.config.backend,
            "profile": loaded.profile.name,
            "device": loaded.profile.device,
            "dtype": loaded.profile.dtype_name,
            "model_dir": str(loaded.model_dir),
            "fingerprint": loaded.fingerprint,
            "max_model_len": loaded.max_model_len,
            "cache": ("actor " + self.cache_client.name) if self.cache_client else
                     ("local" if self.llm.cache is not None else None),
        }
