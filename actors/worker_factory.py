"""Create ModelWorker actors with the resources their device needs, and fan requests out to them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import ray
from ray.actor import ActorHandle

from actors.cache_actor import get_or_create_cache_actor
from actors.model_worker import ModelWorker
from actors.placement import PlacementConfig, place_model_workers
from vlray.config import EngineConfig

T = TypeVar("T")


def create_model_workers(config: EngineConfig, num_workers: int = 1, num_cpus_per_worker: float | None = None,
                         placement: PlacementConfig | None = None) -> list[ActorHandle]:
    """Start `num_workers` ModelWorkers (one per GPU, spread over nodes) and wait until each has loaded its model."""
    if num_workers < 1:
        raise ValueError("num_workers must be at least 1")
    plan, resources = place_model_workers(num_workers, config, num_cpus_per_worker, placement)
    if config.uses_content_cache:
        get_or_create_cache_actor(config, plan.cache_options())  # before the workers, which look it up by name
    workers = [ModelWorker.options(**plan.model_actor_options(resources)).remote(config) for _ in range(num_workers)]
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
