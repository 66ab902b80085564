"""The batch job's input as a Ray dataset of raw rows, each with a stable source."""

from __future__ import annotations

import math
from pathlib import Path

import ray.data

from actors.data.datasources import JsonlLinesDatasource, ParquetRowsDatasource
from vlray.batch.inputs import IMAGE_EXTENSIONS, INPUT_JSONL, INPUT_PARQUET

# Reading is I/O: a quarter CPU per read task, or on a small machine the model actors' CPUs leave a whole one
# to nobody and the read never starts.
READ_TASK_CPUS = 0.25


def read_input(path: Path, kind: str, rows_per_block: int, total_rows: int) -> ray.data.Dataset:
    """A dataset of raw rows in blocks of about `rows_per_block`, each row with a stable source.

    A read task merges what it yields into one block (Ray Data shapes blocks by bytes, and rows of text are
    small), so asking for `total_rows / rows_per_block` blocks is what splits a file into small blocks: each
    travels on alone, and the writer sees results while the job runs.
    """
    root = str(path)
    num_blocks = max(1, math.ceil(total_rows / rows_per_block))
    if kind == INPUT_JSONL:
        source = JsonlLinesDatasource(root, root=root, rows_per_block=rows_per_block)
        return ray.data.read_datasource(source, num_cpus=READ_TASK_CPUS, override_num_blocks=num_blocks)
    if kind == INPUT_PARQUET:
        source = ParquetRowsDatasource(root, root=root, rows_per_block=rows_per_block)
        return ray.data.read_datasource(source, num_cpus=READ_TASK_CPUS, override_num_blocks=num_blocks)
    return ray.data.read_binary_files(root, include_paths=True, file_extensions=IMAGE_EXTENSIONS,
                                      num_cpus=READ_TASK_CPUS, override_num_blocks=num_blocks)
