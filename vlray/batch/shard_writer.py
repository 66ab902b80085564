"""Output shards of a batch job: Parquet files committed atomically, and what earlier runs committed.

A shard is written to a hidden temporary file, fsynced, then renamed into place: a reader (or a resumed run)
sees whole shards or none. The rows of committed shards are the job's progress; a resumed run skips them.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_GLOB = "part-*.parquet"
RESULT_SCHEMA = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("finish_reason", pa.string()),
    ("num_prompt_tokens", pa.int64()), ("num_generated_tokens", pa.int64()), ("error", pa.string()),
    ("error_kind", pa.string()), ("source", pa.string()),
])


class OutputNotWritableError(OSError):
    """The output folder cannot be created or written; raised before any work starts."""


def check_output_writable(out_dir: Path) -> None:
    """Create the folder if needed and prove a file can be written and renamed there."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.replace(probe.with_suffix(".renamed"))
        probe.with_suffix(".renamed").unlink()
    except OSError as exc:
        raise OutputNotWritableError(f"cannot write to output folder {out_dir}: {exc.strerror or exc}") from None


def read_committed(out_dir: Path) -> tuple[set[str], set[str]]:
    """(ids, sources) of every row in the committed shards (none when the folder is new)."""
    ids: set[str] = set()
    sources: set[str] = set()
    for shard in sorted(out_dir.glob(SHARD_GLOB)):
        table = pq.read_table(shard, columns=["id", "source"])
        ids.update(i for i in table.column("id").to_pylist() if i is not None)
        sources.update(s for s in table.column("source").to_pylist() if s is not None)
    return ids, sources


class ShardWriter:
    """Buffers output rows and commits them as a shard every `rows_per_shard` rows or `max_seconds`."""

    def __init__(self, out_dir: Path, rows_per_shard: int = 1000, max_seconds: float = 60.0) -> None:
        self.out_dir = out_dir
        self.rows_per_shard = rows_per_shard
        self.max_seconds = max_seconds
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.num_shards = 0
        self.num_rows = 0
        self._buffer: list[dict[str, Any]] = []
        self._last_commit = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        self._buffer.extend(rows)
        while len(self._buffer) >= self.rows_per_shard:
            self._commit(self._buffer[: self.rows_per_shard])
            self._buffer = self._buffer[self.rows_per_shard:]
        if self._buffer and time.monotonic() - self._last_commit >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        """Commit whatever is buffered."""
        if self._buffer:
            self._commit(self._buffer)
            self._buffer = []

    def _commit(self, rows: list[dict[str, Any]]) -> None:
        name = f"part-{self.run_id}-{self.num_shards:05d}.parquet"
        temporary = self.out_dir / f".{name}.tmp"
        with open(temporary, "wb") as f:
            pq.write_table(_to_table(rows), f)
            f.flush()
            os.fsync(f.fileno())
        temporary.replace(self.out_dir / name)
        _fsync_dir(self.out_dir)
        self.num_shards += 1
        self.num_rows += len(rows)
        self._last_commit = time.monotonic()


def _to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Result columns with a fixed schema; carried-through columns inferred (as text when their types mix)."""
    result_names = set(RESULT_SCHEMA.names)
    columns = {f.name: pa.array([r.get(f.name) for r in rows], type=f.type) for f in RESULT_SCHEMA}
    extra_names = list(dict.fromkeys(k for r in rows for k in r if k not in result_names))
    for name in extra_names:
        values = [r.get(name) for r in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return pa.table(columns)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
