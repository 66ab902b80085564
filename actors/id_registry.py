"""IdRegistry: the one place a batch job decides, row by row, whether to run, skip or reject it."""

from __future__ import annotations

import ray

RUN, SKIP, DUPLICATE = "run", "skip", "duplicate"


@ray.remote(num_cpus=0)
class IdRegistry:
    """Knows the committed rows of earlier runs and the ids claimed in this one.

    A row whose source was committed before is skipped (resume). A row whose id was already committed from
    another source, or claimed earlier in this run, is a duplicate: it is reported as an error row rather
    than run twice or dropped in silence.
    """

    def __init__(self, done_ids: set[str], done_sources: set[str]) -> None:
        self.claimed = set(done_ids)
        self.done_sources = set(done_sources)
        self.num_skipped = 0
        self.num_duplicates = 0

    def claim(self, rows: list[tuple[str, str | None]]) -> list[str]:
        """For each (source, id): run, skip or duplicate. Rows without an id run (to report their error)."""
        verdicts = []
        for source, row_id in rows:
            if source in self.done_sources:
                self.num_skipped += 1
                verdicts.append(SKIP)
            elif row_id is None:
                verdicts.append(RUN)
            elif row_id in self.claimed:
                self.num_duplicates += 1
                verdicts.append(DUPLICATE)
            else:
                self.claimed.add(row_id)
                verdicts.append(RUN)
        return verdicts

    def counts(self) -> dict[str, int]:
        return {"skipped": self.num_skipped, "duplicates": self.num_duplicates}
