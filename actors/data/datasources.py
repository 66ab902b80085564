"""Ray Data readers that give every input row a stable `source` (file:line, file:row, or the image's path).

A resumed job recognises finished rows by their source, so it must be the same from run to run whatever
the row holds: a malformed JSON line has no id, but it has a line number. Ray Data's own read_json fails a
whole file on one bad line and read_parquet gives no row numbers, hence these two small datasources.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import Block
from ray.data.datasource import FileBasedDatasource

SOURCE_COLUMN = "__source__"
LINE_COLUMN = "__line__"
_READ_CHUNK_BYTES = 8 << 20


def relative_source(path: str, root: str) -> str:
    """The path as a user would name it: relative to the input folder, or the file name for a file input."""
    root_path = Path(root)
    if root_path.is_dir():
        return str(Path(path).resolve().relative_to(root_path.resolve()))
    return Path(path).name


class JsonlLinesDatasource(FileBasedDatasource):
    """Raw lines of JSONL files, each with its `file:line` source; parsing happens downstream, per line.

    Blocks are small (`rows_per_block`): a block is what flows from stage to stage, and rows cost a
    generation each, so small blocks keep every stage busy and results streaming to the writer.
    """

    _FILE_EXTENSIONS = ["jsonl", "json", "ndjson"]

    def __init__(self, paths: str | list[str], root: str, rows_per_block: int, **kwargs) -> None:
        super().__init__(paths, **kwargs)
        self.root = root
        self.rows_per_block = rows_per_block

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[Block]:
        name = relative_source(path, self.root)
        sources: list[str] = []
        lines: list[str] = []
        for number, line in enumerate(_iter_lines(f), start=1):
            if not line.strip():
                continue  # blank lines are not rows
            sources.append(f"{name}:{number}")
            lines.append(line)
            if len(lines) >= self.rows_per_block:
                yield pa.table({SOURCE_COLUMN: sources, LINE_COLUMN: lines})
                sources, lines = [], []
        if lines:
            yield pa.table({SOURCE_COLUMN: sources, LINE_COLUMN: lines})


class ParquetRowsDatasource(FileBasedDatasource):
    """Parquet rows with a `file:row` source column added (row numbers count from 0 within each file)."""

    _FILE_EXTENSIONS = ["parquet"]

    def __init__(self, paths: str | list[str], root: str, rows_per_block: int, **kwargs) -> None:
        super().__init__(paths, **kwargs)
        self.root = root
        self.rows_per_block = rows_per_block

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        # Parquet needs random access (its footer is at the end); the default stream is not seekable.
        return filesystem.open_input_file(path)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[Block]:
        name = relative_source(path, self.root)
        first_row = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=self.rows_per_block):
            table = pa.Table.from_batches([batch])
            sources = [f"{name}:{first_row + i}" for i in range(table.num_rows)]
            first_row += table.num_rows
            yield table.append_column(SOURCE_COLUMN, pa.array(sources, type=pa.string()))


def _iter_lines(f: pa.NativeFile) -> Iterator[str]:
    """Decoded lines of a byte stream, read in chunks (a JSONL of base64 images can be gigabytes)."""
    pending = b""
    while True:
        chunk = f.read(_READ_CHUNK_BYTES)
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", errors="replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", errors="replace").rstrip("\r")
