"""Create ModelWorker actors with the resources their device needs, and fan requests out to them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
from ray.actor import ActorHandle

from actors.cache_actor import get_or_create_cache_actor
from actors.model_worker import ModelWorker
from engine.config import EngineConfig

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkerResources:
    """What Ray reserves for one ModelWorker."""

    num_cpus: float
    num_gpus: float


def plan_worker_resources(cluster: dict[str, float], num_workers: int, config: EngineConfig,
                          num_cpus_per_worker: float | None = None) -> WorkerResources:
    """One GPU per worker where the cluster has GPUs; on CPU-only clusters, the CPUs shared among workers.

    A profile of `cpu` keeps workers off GPUs even where there are some.
    """
    gpus = cluster.get("GPU", 0.0)
    if gpus >= 1 and config.device_profile != "cpu":
        if num_workers > gpus:
            raise ValueError(f"{num_workers} GPU workers asked for, but the cluster has {int(gpus)} GPUs: "
                             "use --num-workers at most the GPU count (one model per GPU).")
        return WorkerResources(num_cpus=num_cpus_per_worker or 1.0, num_gpus=1.0)
    cpus = cluster.get("CPU", 1.0)
    return WorkerResources(num_cpus=num_cpus_per_worker or max(1.0, float(int(cpus // num_workers))), num_gpus=0.0)


def create_model_workers(config: EngineConfig, num_workers: int = 1,
                         num_cpus_per_worker: float | None = None) -> list[ActorHandle]:
    """Start `num_workers` ModelWorkers and wait until each has loaded its model."""
    if num_workers < 1:
        raise ValueError("num_workers must be at least 1")
    resources = plan_worker_resources(ray.cluster_resources(), num_workers, config, num_cpus_per_worker)
    if config.uses_content_cache:
        get_or_create_cache_actor(config)  # before the workers, which look it up by name
    workers = [
        ModelWorker.options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus).remote(config)
        for _ in range(num_workers)
    ]
    ray.get([w.info.remote() for w in workers])  # surfaces a load error here, not at the first request
    return workers


def split_evenly(items: Sequence[T], num_parts: int) -> list[list[T]]:
    """Contiguous, near-equal parts (sizes differ by at most one); empty parts dropped."""
    size, extra = divmod(len(items), num_parts)
    parts, start = [], 0
    for part in range(num_parts):
        end = start + size + (1 if part < extra else 0)
        if end > start:
            parts.append(list(items[start:end]))
        start = end
    return parts


def fan_out_generate(workers: Sequence[ActorHandle], requests: Sequence[Any]) -> list[Any]:
    """Split requests over workers, fire every call first, then one ray.get; results in input order."""
    parts = split_evenly(requests, len(workers))
    refs = [worker.generate.remote(part) for worker, part in zip(workers, parts)]
    return [result for part_results in ray.get(refs) for result in part_results]
