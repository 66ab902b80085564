"""The batch input, checked before any model loads: recognised extensions only, folders that mix JSONL and
Parquet, row counts in any encoding, and a corrupt Parquet file named in one InputError."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlray.batch.inputs import (INPUT_IMAGES, INPUT_JSONL, INPUT_TABLES, InputError, count_input_rows,
                                input_files, input_kind_of)


def _jsonl(path, n, encoding="utf-8"):
    path.write_bytes("".join(json.dumps({"id": f"{path.stem}{i}", "prompt": "hi"}) + "\n"
                             for i in range(n)).encode(encoding))


def test_a_folder_reads_only_recognised_files(tmp_path):
    _jsonl(tmp_path / "a.jsonl", 3)
    (tmp_path / "README.md").write_text("line\n" * 393)
    (tmp_path / "cat.png").write_bytes(b"\x89PNG....")
    assert input_kind_of(tmp_path) == INPUT_JSONL
    assert [f.name for f in input_files(tmp_path, INPUT_JSONL)] == ["a.jsonl"]
    assert count_input_rows(tmp_path, INPUT_JSONL) == 3


def test_a_folder_may_mix_jsonl_and_parquet(tmp_path):
    _jsonl(tmp_path / "a.jsonl", 2, "utf-16")
    pq.write_table(pa.table({"id": ["p0", "p1", "p2"], "prompt": ["x"] * 3}), tmp_path / "b.parquet")
    assert input_kind_of(tmp_path) == INPUT_TABLES
    assert count_input_rows(tmp_path, INPUT_TABLES) == 5


def test_a_corrupt_parquet_file_is_one_error_naming_it(tmp_path):
    (tmp_path / "good.parquet").write_bytes(b"")
    pq.write_table(pa.table({"id": ["p0"], "prompt": ["x"]}), tmp_path / "good.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="bad.parquet"):
        count_input_rows(tmp_path, input_kind_of(tmp_path))


def test_images_folder_and_unknown_files(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    assert input_kind_of(tmp_path) == INPUT_IMAGES
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=".jsonl, .json, .ndjson or .parquet"):
        input_kind_of(tmp_path / "notes.txt")
