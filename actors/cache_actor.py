"""CacheActor: one TieredStore shared by ModelWorkers, its hot tier in Ray's object store.

The actor holds object refs for the hot entries, so a worker's `get_refs` returns refs and the worker fetches
the values from the object store itself (from another node too) without them passing through the actor. Warm
and cold files sit on the actor's node under the config's cache folder; a new actor on that folder (after a
restart, or `ray.kill`) rebuilds its index from them.
"""

from __future__ import annotations

from typing import Any

import ray
from ray import ObjectRef
from ray.actor import ActorHandle

from actors.metrics import CacheMetrics
from vlray.cache.tiered_store import TieredStore, open_store
from vlray.config import EngineConfig

NAMESPACE = "vlray"
# Ray ends a named actor that is not detached once its creator drops every handle to it: the creating process
# keeps one here for as long as it runs (the job's lifetime), whoever else looks the actor up by name.
_held: dict[str, ActorHandle] = {}


class ObjectStoreHot:
    """Hot tier as object refs this actor owns: `wrap` puts the bytes in the object store."""

    def wrap(self, data: bytes) -> ObjectRef:
        return ray.put(data)

    def unwrap(self, handle: ObjectRef) -> bytes:
        return ray.get(handle)


@ray.remote(num_cpus=0, max_restarts=3)
class CacheActor:
    """Preprocessed images and vision-encoder outputs for every worker; see vlray/cache/tiered_store.py."""

    def __init__(self, config: EngineConfig) -> None:
        self.store: TieredStore[ObjectRef] = open_store(config, ObjectStoreHot())
        self.metrics = CacheMetrics()

    def get_refs(self, keys: list[str]) -> dict[str, ObjectRef]:
        """Object refs of the keys found (warm and cold hits are promoted into the object store first)."""
        found = {}
        for key in keys:
            ref = self.store.get(key)
            if ref is not None:
                found[key] = ref
        self.metrics.publish(self.store.stats())
        return found

    def put(self, items: dict[str, bytes]) -> None:
        self.store.put_many(items)
        self.metrics.publish(self.store.stats())

    def stats(self) -> dict[str, Any]:
        """Hits and misses per tier, bytes and entries per tier, evictions, corrupt files found."""
        return self.store.stats()

    def flush(self) -> None:
        """Move the hot tier to disk (before a planned stop), so the next actor on the folder finds it."""
        self.store.flush()


def get_or_create_cache_actor(config: EngineConfig, placement_options: dict[str, Any] | None = None) -> ActorHandle:
    """The CacheActor named in the config (namespace `vlray`), created if there is none; detached if asked.

    `placement_options`: where a new one goes (Placement.cache_options); an existing one stays where it is."""
    options: dict[str, Any] = {"name": config.cache_actor_name, "namespace": NAMESPACE, "get_if_exists": True,
                               **(placement_options or {})}
    if config.cache_actor_detached:
        options["lifetime"] = "detached"
    actor = CacheActor.options(**options).remote(config)
    ray.get(actor.stats.remote())  # surfaces a construction error here
    # Keep the owner's handle: a handle from get_if_exists does not own the actor, and dropping the owner's (by
    # overwriting it with this one) would let Ray kill the actor under the workers using it. A held handle of
    # another actor (one that died since) is replaced by this, the new actor's.
    held = _held.get(config.cache_actor_name)
    if held is None or held._actor_id != actor._actor_id:
        _held[config.cache_actor_name] = actor
    return actor


def find_cache_actor(name: str) -> ActorHandle | None:
    """The running CacheActor of this name, or None."""
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None
