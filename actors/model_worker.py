"""ModelWorker: a Ray actor that holds the model on its device and answers generate calls."""

from __future__ import annotations

import os
import socket
from typing import Any

import ray

from actors.metrics import VlrayMetrics
from engine.batch_generator import BatchGenerator
from engine.config import EngineConfig
from engine.model_loader import set_cpu_threads
from engine.request import GenerationRequest, GenerationResult
from engine.stats import PipelineStats


@ray.remote
class ModelWorker:
    """Loads the model once, then serves `generate(requests)` calls; one per GPU (or a CPU worker)."""

    def __init__(self, config: EngineConfig) -> None:
        # Ray sets OMP_NUM_THREADS=1 in workers; unless told otherwise, use the CPUs this actor was granted.
        granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        set_cpu_threads(config.num_threads or max(1, int(granted)))
        self.config = config
        self.generator = BatchGenerator.from_config(config)
        self.metrics = VlrayMetrics("pipeline", config.model)

    def generate(self, requests: list[GenerationRequest | dict[str, Any]]) -> list[GenerationResult]:
        """One result per request, in order; bad requests come back as error results."""
        results = self.generator.generate(requests)
        self.metrics.publish(self.generator.stats)
        return results

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
            "profile": loaded.profile.name,
            "device": loaded.profile.device,
            "dtype": loaded.profile.dtype_name,
            "model_dir": str(loaded.model_dir),
            "fingerprint": loaded.fingerprint,
            "max_model_len": loaded.max_model_len,
        }
