"""StatsCollector: stage actors of a batch job report their running totals here; the driver reads them."""

from __future__ import annotations

from typing import Any

import ray


@ray.remote(num_cpus=0)
class StatsCollector:
    """Latest snapshot per (stage, actor): reports are idempotent, so a late or repeated one does no harm."""

    def __init__(self) -> None:
        self.snapshots: dict[tuple[str, str], Any] = {}

    def report(self, stage: str, actor_id: str, snapshot: Any) -> None:
        self.snapshots[(stage, actor_id)] = snapshot

    def collect(self) -> dict[str, list[Any]]:
        """Snapshots grouped by stage."""
        grouped: dict[str, list[Any]] = {}
        for (stage, _), snapshot in self.snapshots.items():
            grouped.setdefault(stage, []).append(snapshot)
        return grouped
