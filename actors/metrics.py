"""vlray's metrics, published through `ray.util.metrics`: Ray exports them on every node's Prometheus endpoint
(and its dashboard's Grafana), prefixed `ray_`, with the node, worker and session as labels.

The engine keeps plain counters (PipelineStats, its queue); the actors that hold an engine publish them here,
and the cache actor its store's hits per tier (CacheMetrics: no app tag, one cache serves them all).
Every metric carries an `app` tag: `batch` (the batch job's generate stage), `pipeline` (ModelWorker) or
`serve` (a Serve replica); and a `model` tag: the model folder or hub id (the served name under Serve).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Mapping

from ray.util.metrics import Counter, Gauge, Histogram

from vlray.stats import PipelineStats

FILL_BOUNDARIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]


class VlrayMetrics:
    """The metrics of one actor that holds an engine."""

    def __init__(self, app: str, model: str) -> None:
        self.tags = {"app": app, "model": model}
        self._last = PipelineStats()  # what was published so far
        self.rows = Counter("vlray_rows", "Rows (requests) finished, by outcome: ok or error.",
                            tag_keys=("app", "model", "outcome"))
        self.prompt_tokens = Counter("vlray_prompt_tokens", "Prompt tokens of the rows that finished ok.",
                                     tag_keys=("app", "model"))
        self.generated_tokens = Counter("vlray_generated_tokens", "Tokens generated for the rows that finished ok.",
                                        tag_keys=("app", "model"))
        self.errors = Counter("vlray_errors", "Rows that finished with an error, by kind (error_kind).",
                              tag_keys=("app", "model", "kind"))
        self.batches = Counter("vlray_model_batches", "Model batches run.", tag_keys=("app", "model"))
        self.batch_fill = Histogram(
            "vlray_batch_fill", "Share of the prompt slots (rows x padded length) of the model batches since the "
            "last report that hold real tokens.", boundaries=FILL_BOUNDARIES, tag_keys=("app", "model"))
        self.queue_depth = Gauge("vlray_queue_depth", "Requests waiting for a model batch.", tag_keys=("app", "model"))
        self.retried_rows = Counter("vlray_retried_rows", "Rows a stage started again after an actor or node was "
                                    "lost.", tag_keys=("app", "model", "stage"))

    def publish(self, stats: PipelineStats) -> None:
        """Publish what the engine did since the last call (its stats are cumulative)."""
        try:
            now = PipelineStats().merge(stats)  # a snapshot: the engine's thread may go on counting meanwhile
        except RuntimeError:  # it added an error kind while this copied them: publish at the next report
            return
        last, self._last = self._last, now
        self._inc(self.rows, now.num_ok - last.num_ok, outcome="ok")
        self._inc(self.prompt_tokens, now.num_prompt_tokens - last.num_prompt_tokens)
        self._inc(self.generated_tokens, now.num_generated_tokens - last.num_generated_tokens)
        self._record_error_counts({kind: count - last.errors_by_kind.get(kind, 0)
                                   for kind, count in now.errors_by_kind.items()})
        self._inc(self.batches, now.num_batches - last.num_batches)
        slots = now.num_batch_prompt_slots - last.num_batch_prompt_slots
        if slots > 0:
            self.batch_fill.observe(1 - (now.num_padding_tokens - last.num_padding_tokens) / slots, tags=self.tags)

    def record_errors(self, kinds: Iterable[str | None]) -> None:
        """Rows that failed, one kind each (also those that failed before reaching the engine)."""
        self._record_error_counts(collections.Counter(kind or "internal" for kind in kinds))

    def set_queue_depth(self, num_waiting: int) -> None:
        self.queue_depth.set(num_waiting, tags=self.tags)

    def record_retried_rows(self, stage: str, num_rows: int) -> None:
        self._inc(self.retried_rows, num_rows, stage=stage)

    def _record_error_counts(self, counts: Mapping[str, int]) -> None:
        for kind, count in counts.items():
            self._inc(self.rows, count, outcome="error")
            self._inc(self.errors, count, kind=kind)

    def _inc(self, metric: Counter, value: int, **tags: str) -> None:
        if value > 0:
            metric.inc(value, tags={**self.tags, **tags})


class CacheMetrics:
    """The cache actor's lookups, published from its store's cumulative counters: hits per tier, misses, and the
    bytes each tier holds."""

    def __init__(self) -> None:
        self._last_hits: dict[str, int] = {}
        self._last_misses = 0
        self.hits = Counter("vlray_cache_hits", "Cache lookups found, by the tier they were found in.",
                            tag_keys=("tier",))
        self.misses = Counter("vlray_cache_misses", "Cache lookups not found in any tier.")
        self.bytes = Gauge("vlray_cache_bytes", "Bytes each cache tier holds.", tag_keys=("tier",))

    def publish(self, stats: Mapping) -> None:
        """`stats`: TieredStore.stats()."""
        for tier, count in stats["hits"].items():
            if count > self._last_hits.get(tier, 0):
                self.hits.inc(count - self._last_hits.get(tier, 0), tags={"tier": tier})
            self._last_hits[tier] = count
        if stats["misses"] > self._last_misses:
            self.misses.inc(stats["misses"] - self._last_misses)
        self._last_misses = stats["misses"]
        for tier, size in stats["bytes"].items():
            self.bytes.set(size, tags={"tier": tier})


def publish_every(metrics: VlrayMetrics, stats: Callable[[], PipelineStats], queue_depth: Callable[[], int],
                  interval_s: float = 1.0) -> threading.Event:
    """Publish an engine's stats and queue depth every `interval_s` from a daemon thread (for engines that run
    on threads of their own, like a Serve replica's); set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            metrics.publish(stats())
            metrics.set_queue_depth(queue_depth())

    threading.Thread(target=loop, name="vlray-metrics", daemon=True).start()
    return stop
