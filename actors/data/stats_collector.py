"""StatsCollector: stage actors of a batch job report their running totals here; the driver reads them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import ray


@ray.remote(num_cpus=0)
class StatsCollector:
    """Latest snapshot per (stage, actor incarnation): reports are idempotent, so a late or repeated one does
    no harm. It also sees every row a stage starts, so a row started twice (its actor or node was lost and Ray
    ran the work again) is counted as a retry."""

    def __init__(self) -> None:
        self.snapshots: dict[tuple[str, str], Any] = {}
        self.started: dict[str, set[str]] = {}
        self.retried_rows: Counter = Counter()
        self.retried_windows: Counter = Counter()

    def report(self, stage: str, actor_key: str, snapshot: Any) -> None:
        self.snapshots[(stage, actor_key)] = snapshot

    def begin(self, stage: str, sources: list[str]) -> int:
        """A stage starts work on these rows; returns how many of them it had started before."""
        started = self.started.setdefault(stage, set())
        seen = sum(1 for source in sources if source in started)
        started.update(sources)
        if seen:
            self.retried_rows[stage] += seen
            self.retried_windows[stage] += 1
        return seen

    def collect(self) -> dict[str, list[Any]]:
        """Snapshots grouped by stage."""
        grouped: dict[str, list[Any]] = {}
        for (stage, _), snapshot in self.snapshots.items():
            grouped.setdefault(stage, []).append(snapshot)
        return grouped

    def retries(self) -> dict[str, dict[str, int]]:
        """Per stage: windows run again, and the rows in them that had been started before."""
        return {stage: {"windows": self.retried_windows[stage], "rows": self.retried_rows[stage]}
                for stage in self.started}
