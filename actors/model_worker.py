"""ModelWorker: a Ray actor that holds the model on its device and answers generate calls."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import ray

from engine.config import EngineConfig
from engine.generator_factory import create_generator
from engine.model_loader import set_cpu_threads
from engine.request import GenerationRequest, GenerationResult
from engine.stats import PipelineStats
from engine.token_stream import StreamDelta


@ray.remote
class ModelWorker:
    """Loads the model once, then serves `generate(requests)` calls; one per GPU (or a CPU worker)."""

    def __init__(self, config: EngineConfig) -> None:
        # Ray sets OMP_NUM_THREADS=1 in workers; unless told otherwise, use the CPUs this actor was granted.
        granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        set_cpu_threads(config.num_threads or max(1, int(granted)))
        self.config = config
        self.generator = create_generator(config)

    def generate(self, requests: list[GenerationRequest | dict[str, Any]]) -> list[GenerationResult]:
        """One result per request, in order; bad requests come back as error results."""
        return self.generator.generate(requests)

    @ray.method(num_returns="streaming")
    def stream(self, requests: list[GenerationRequest | dict[str, Any]]) -> Iterator[StreamDelta | GenerationResult]:
        """Text deltas as they are made and each result as its request ends: `for ref in worker.stream.remote(r)`."""
        for event in self.generator.stream(requests):  # not `yield from`: Ray resumes with send(), lists lack it
            yield event

    def stats(self) -> PipelineStats:
        return self.generator.stats

    def reset_stats(self) -> PipelineStats:
        return self.generator.reset_stats()

    def info(self) -> dict[str, Any]:
        """Where and how this worker runs."""
        loaded = self.generator.loaded
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
        }
