"""The batch job's input: what kind it is and how many rows to expect (reading it is actors/data/read_input.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq


INPUT_JSONL, INPUT_PARQUET, INPUT_IMAGES = "jsonl", "parquet", "images"
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
