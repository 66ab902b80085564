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

from vlray.batch.inputs import JSONL_SUFFIXES
from vlray.batch.text_lines import iter_text_lines

SOURCE_COLUMN = "__source__"
LINE_COLUMN = "__line__"
ERROR_COLUMN = "__read_error__"


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

    _FILE_EXTENSIONS = [s.lstrip(".") for s in JSONL_SUFFIXES]

    def __init__(self, paths: str | list[str], root: str, rows_per_block: int, **kwargs) -> None:
        # Only files of these suffixes: a README or an image beside the JSONL is not rows.
        super().__init__(paths, file_extensions=self._FILE_EXTENSIONS, **kwargs)
        self.root = root
        self.rows_per_block = rows_per_block

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[Block]:
        name = relative_source(path, self.root)
        sources: list[str] = []
        lines: list[str] = []
        for number, line in enumerate(iter_text_lines(f.read), start=1):
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
        super().__init__(paths, file_extensions=self._FILE_EXTENSIONS, **kwargs)
        self.root = root
        self.rows_per_block = rows_per_block

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        # Parquet needs random access (its footer is at the end); the default stream is not seekable.
        return filesystem.open_input_file(path)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[Block]:
        name = relative_source(path, self.root)
        try:
            parquet = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as exc:  # the job checks footers first; a file can change since
            yield _error_rows([f"{name}:unreadable"], f"cannot read Parquet file {name}: {exc}")
            return
        first_row = 0
        for group in range(parquet.num_row_groups):
            num_rows = parquet.metadata.row_group(group).num_rows
            try:
                table = parquet.read_row_group(group)
            except (pa.ArrowException, OSError) as exc:
                # The footer says which rows the group held: each becomes an error row, so none is lost.
                sources = [f"{name}:{first_row + i}" for i in range(num_rows)]
                yield _error_rows(sources, f"cannot read rows of Parquet file {name}: {exc}")
                first_row += num_rows
                continue
            for start in range(0, table.num_rows, self.rows_per_block):
                piece = table.slice(start, self.rows_per_block)
                sources = [f"{name}:{first_row + start + i}" for i in range(piece.num_rows)]
                yield piece.append_column(SOURCE_COLUMN, pa.array(sources, type=pa.string()))
            first_row += num_rows


def _error_rows(sources: list[str], message: str) -> pa.Table:
    return pa.table({SOURCE_COLUMN: pa.array(sources, type=pa.string()),
                     ERROR_COLUMN: pa.array([message] * len(sources), type=pa.string())})
