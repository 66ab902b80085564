"""The batch job's input: what kind it is, which files it reads, and how many rows to expect, all checked
before any model loads (reading it is actors/data/read_input.py).

Recognised files: .jsonl, .json and .ndjson (JSON lines, in UTF-8, UTF-16 or UTF-32 with or without a BOM),
.parquet, and images (.png, .jpg, .jpeg, .webp, .gif, .bmp, .tif, .tiff). A folder of tables may mix JSONL
and Parquet; anything else in it (a README, the images its rows name) is not read as rows.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlray.batch.text_lines import iter_text_lines

INPUT_JSONL, INPUT_PARQUET, INPUT_TABLES, INPUT_IMAGES = "jsonl", "parquet", "tables", "images"
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"]


class InputError(ValueError):
    """The input path cannot be read as a batch job's input; raised before anything is loaded."""


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in JSONL_SUFFIXES


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def _is_image(path: Path) -> bool:
    return path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


def input_kind_of(path: Path) -> str:
    """jsonl, parquet, tables (a folder of both) or images, from a file's suffix or what a folder holds."""
    if not path.exists():
        raise InputError(f"input path does not exist: {path}")
    if path.is_file():
        if _is_jsonl(path):
            return INPUT_JSONL
        if _is_parquet(path):
            return INPUT_PARQUET
        raise InputError(f"cannot read {path}: an input file must be .jsonl, .json, .ndjson or .parquet (or give "
                         "a folder of images, or of such files)")
    files = [p for p in path.rglob("*") if p.is_file()]
    has_jsonl, has_parquet = any(map(_is_jsonl, files)), any(map(_is_parquet, files))
    if has_jsonl and has_parquet:
        return INPUT_TABLES
    if has_parquet:
        return INPUT_PARQUET
    if has_jsonl:
        return INPUT_JSONL
    if any(map(_is_image, files)):
        return INPUT_IMAGES
    raise InputError(f"{path} holds no .jsonl, .json, .ndjson, .parquet or image files")


def input_files(path: Path, kind: str) -> list[Path]:
    """The files of the input that are read as rows, in a stable order."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    wanted = {INPUT_JSONL: _is_jsonl, INPUT_PARQUET: _is_parquet, INPUT_IMAGES: _is_image,
              INPUT_TABLES: lambda p: _is_jsonl(p) or _is_parquet(p)}[kind]
    return [f for f in files if wanted(f)]


def count_input_rows(path: Path, kind: str) -> int:
    """Rows the input holds (for the progress bar): non-blank lines, Parquet row counts, or image files. Reads
    every Parquet footer, so a corrupt file is an InputError naming it before any model loads."""
    total = 0
    for file in input_files(path, kind):
        if _is_jsonl(file):
            with open(file, "rb") as f:
                total += sum(1 for line in iter_text_lines(f.read) if line.strip())
        elif _is_parquet(file):
            try:
                total += pq.ParquetFile(file).metadata.num_rows
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"cannot read Parquet file {file}: {exc}") from None
        else:
            total += 1
    return total
