"""The worker's side of the CacheActor: a BlobCache whose every failure is a miss.

When the actor is gone (killed, its node lost) or does not answer in time, lookups return nothing and stores are
skipped, with one warning: the worker goes on encoding every image itself, slower but with the same answers.
It looks the actor up again by name every `retry_s` seconds, so a restarted or new one is picked up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayError

from actors.cache_actor import find_cache_actor
from vlray.config import EngineConfig

log = logging.getLogger(__name__)


class CacheActorClient:
    """BlobCache over a named CacheActor; values are fetched from the object store by ref."""

    def __init__(self, actor: ActorHandle | None, name: str, timeout_s: float = 60.0, retry_s: float = 30.0) -> None:
        self.actor = actor
        self.name = name
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._retry_at = 0.0
        self.num_failures = 0

    @classmethod
    def of_config(cls, config: EngineConfig) -> "CacheActorClient | None":
        """A client of the config's CacheActor (its name and retry interval), or None when none runs."""
        return cls.connect(config.cache_actor_name, config.cache_actor_retry_s)

    @classmethod
    def connect(cls, name: str, retry_s: float = 30.0) -> "CacheActorClient | None":
        """A client of the running CacheActor `name`, or None when there is none."""
        actor = find_cache_actor(name)
        return cls(actor, name, retry_s=retry_s) if actor is not None else None

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        refs = self._call("get_refs", list(keys)) if keys else None
        if not refs:
            return {}
        try:
            values = ray.get(list(refs.values()), timeout=self.timeout_s)
        except RayError as exc:  # an object lost with its node, say
            self._lost(exc)
            return {}
        return dict(zip(refs, values))

    def put_many(self, items: Mapping[str, bytes]) -> None:
        if items:
            # Waited for, so that a worker asking next (this one or another) finds what was just stored.
            self._call("put", dict(items))

    def stats(self) -> dict[str, Any] | None:
        """The actor's stats, or None when it cannot be reached."""
        return self._call("stats")

    def _call(self, method: str, *args: Any) -> Any:
        """ray.get of one actor call; None when there is no actor or it fails. An actor that died is looked up
        again at once, so one started in its place (same name, same folder) serves this very call."""
        for attempt in range(2):
            actor = self._actor()
            if actor is None:
                return None
            try:
                return ray.get(getattr(actor, method).remote(*args), timeout=self.timeout_s)
            except RayActorError as exc:
                self._lost(exc, look_again_now=attempt == 0)
            except RayError as exc:
                self._lost(exc)
                return None
        return None

    def _actor(self) -> ActorHandle | None:
        if self.actor is None and time.monotonic() >= self._retry_at:
            self.actor = find_cache_actor(self.name)
            if self.actor is None:
                self._retry_at = time.monotonic() + self.retry_s
        return self.actor

    def _lost(self, exc: Exception, look_again_now: bool = False) -> None:
        self.num_failures += 1
        self.actor = None
        self._retry_at = 0.0 if look_again_now else time.monotonic() + self.retry_s
        log.warning("CacheActor %r failed (%s: %s); going on without it until it is found again (looked up by "
                    "name every %.0f s)", self.name, type(exc).__name__, (str(exc).splitlines() or [""])[0],
                    self.retry_s)
