"""Counters and per-stage timings of a generation pipeline; mergeable across workers."""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

STAGES = ("load", "preprocess", "transfer", "encode", "compute", "postprocess")


@dataclass
class PipelineStats:
    """What went through a pipeline and where the time went."""

    num_requests: int = 0
    num_ok: int = 0
    num_failed: int = 0
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    num_batches: int = 0
    num_batch_prompt_slots: int = 0  # rows x padded prompt length, summed over model batches
    num_padding_tokens: int = 0
    num_prefix_cached_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache (engine)
    num_preemptions: int = 0  # engine: sequences preempted (recomputed later) when the KV cache was full
    num_images: int = 0  # images in model batches
    num_images_encoded: int = 0  # of those, the images the vision encoder ran on (the rest came from the cache)
    num_encoder_calls: int = 0
    num_preprocessed_cache_hits: int = 0  # images whose patches came from the cache, not from decoding
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    wall_seconds: float = 0.0
    errors_by_kind: Counter = field(default_factory=Counter)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block under a stage name."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - start

    def take(self) -> "PipelineStats":
        """A copy of the stats so far, and these zeroed in place (the components that count keep counting)."""
        old = copy.deepcopy(self)
        for f in fields(self):
            setattr(self, f.name, copy.deepcopy(getattr(PipelineStats(), f.name)))
        return old

    def count_results(self, results: Iterable[Any]) -> None:
        """Add finished requests' results (GenerationResult): rows ok and failed, tokens."""
        for result in results:
            self.num_requests += 1
            if result.ok:
                self.num_ok += 1
                self.num_prompt_tokens += result.num_prompt_tokens
                self.num_generated_tokens += result.num_generated_tokens
            else:
                self.record_error(result.error_kind)

    def record_error(self, kind: str | None) -> None:
        self.num_failed += 1
        self.errors_by_kind[kind or "internal"] += 1

    @property
    def padding_fraction(self) -> float:
        """Pad tokens / all prompt tokens in model batches."""
        return self.num_padding_tokens / self.num_batch_prompt_slots if self.num_batch_prompt_slots else 0.0

    def merge(self, other: "PipelineStats") -> "PipelineStats":
        """Sum of two stats (walls add too: merge per-worker stats, then set the wall you measured)."""
        merged = PipelineStats()
        for name in _COUNTERS:
            setattr(merged, name, getattr(self, name) + getattr(other, name))
        for stats in (self, other):
            for stage, seconds in stats.stage_seconds.items():
                merged.stage_seconds[stage] = merged.stage_seconds.get(stage, 0.0) + seconds
        merged.errors_by_kind = self.errors_by_kind + other.errors_by_kind
        return merged

    def to_dict(self) -> dict[str, Any]:
        wall = self.wall_seconds
        return {
            **{name: getattr(self, name) for name in _COUNTERS if name != "wall_seconds"},
            "padding_fraction": round(self.padding_fraction, 4),
            "stage_seconds": {k: round(v, 4) for k, v in self.stage_seconds.items()},
            "wall_seconds": round(wall, 4),
            "requests_per_second": round(self.num_requests / wall, 3) if wall else 0.0,
            "generated_tokens_per_second": round(self.num_generated_tokens / wall, 3) if wall else 0.0,
            "errors_by_kind": dict(self.errors_by_kind),
        }


# Every number that adds up across workers: the dataclass's int and float fields.
_COUNTERS = tuple(f.name for f in fields(PipelineStats) if f.type in ("int", "float"))
