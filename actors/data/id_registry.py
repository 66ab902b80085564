"""IdRegistry: the one place a batch job decides, row by row, whether to run, skip or reject it."""

from __future__ import annotations

import ray

RUN, SKIP, DUPLICATE = "run", "skip", "duplicate"


@ray.remote(num_cpus=0)
class IdRegistry:
    """Knows the committed rows of earlier runs and the ids claimed in this one.

    A row whose source was committed before is skipped (resume). A row whose id was already committed from
    another source, or claimed earlier in this run by another row, is a duplicate: it is reported as an error
    row rather than run twice or dropped in silence. The same row claiming its id again is not a duplicate:
    Ray parses a block again when the node holding its rows was lost before they were used.
    """

    def __init__(self, done_ids: set[str], done_sources: set[str]) -> None:
        self.claimed: dict[str, str | None] = dict.fromkeys(done_ids)  # id -> the source that claimed it
        self.done_sources = set(done_sources)
        self.skipped: set[str] = set()  # sets, not counts: a row parsed again is counted once
        self.duplicates: set[str] = set()

    def claim(self, rows: list[tuple[str, str | None]]) -> list[str]:
        """For each (source, id): run, skip or duplicate. Rows without an id run (to report their error)."""
        verdicts = []
        for source, row_id in rows:
            if source in self.done_sources:
                self.skipped.add(source)
                verdicts.append(SKIP)
            elif row_id is None:
                verdicts.append(RUN)
            elif row_id not in self.claimed or self.claimed[row_id] == source:
                self.claimed[row_id] = source
                verdicts.append(RUN)
            else:
                self.duplicates.add(source)
                verdicts.append(DUPLICATE)
        return verdicts

    def counts(self) -> dict[str, int]:
        return {"skipped": len(self.skipped), "duplicates": len(self.duplicates)}
