"""The batch job's input: what kind it is, a Ray dataset of its rows, and how many rows to expect."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import ray.data

from actors.batch_datasources import JsonlLinesDatasource, ParquetRowsDatasource
from actors.batch_parse import INPUT_IMAGES, INPUT_JSONL, INPUT_PARQUET

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"]


class InputError(ValueError):
    """The input path cannot be read as a batch job's input; raised before anything is loaded."""


def input_kind_of(path: Path) -> str:
    """jsonl, parquet or images, from a file's suffix or what a folder holds."""
    if not path.exists():
        raise InputError(f"input path does not exist: {path}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            return INPUT_JSONL
        if suffix == ".parquet":
            return INPUT_PARQUET
        raise InputError(f"cannot read {path}: an input file must be .jsonl or .parquet (or give a folder of "
                         "images, or of .jsonl/.parquet files)")
    if any(path.rglob("*.parquet")):
        return INPUT_PARQUET
    if any(p.suffix.lower() in JSONL_SUFFIXES for p in path.rglob("*")):
        return INPUT_JSONL
    if any(p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS for p in path.rglob("*")):
        return INPUT_IMAGES
    raise InputError(f"{path} holds no .jsonl, .parquet or image files")


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


def count_input_rows(path: Path, kind: str) -> int:
    """Rows the input holds (for the progress bar): non-blank lines, Parquet row counts, or image files."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if kind == INPUT_JSONL:
        total = 0
        for file in files:
            if file.suffix.lower() in JSONL_SUFFIXES:
                with open(file, "rb") as f:
                    total += sum(1 for line in f if line.strip())
        return total
    if kind == INPUT_PARQUET:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files if f.suffix == ".parquet")
    return sum(1 for f in files if f.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
