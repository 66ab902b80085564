"""Shards on a full disk: a clear error, no temporary file left, committed shards kept for the resume; and
rows that failed only beside others are dropped from committed shards so the resume runs them again."""

import errno

import pyarrow.parquet as pq
import pytest

from vlray.batch import shard_writer
from vlray.batch.shard_writer import OutputWriteError, ShardWriter, drop_retryable_rows, read_committed


def _row(i, kind=None):
    return {"id": str(i), "text": "t", "finish_reason": "error" if kind else "stop", "num_prompt_tokens": 1,
            "num_generated_tokens": 1, "error": kind, "error_kind": kind, "source": f"in.jsonl:{i}"}


def test_a_full_disk_stops_with_a_clear_message_and_no_temporary_file(tmp_path, monkeypatch):
    writer = ShardWriter(tmp_path, rows_per_shard=2)
    writer.add([_row(0), _row(1)])
    real = shard_writer._write_synced

    def full(path, table):
        real(path, table)  # part of it reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shard_writer, "_write_synced", full)
    with pytest.raises(OutputWriteError, match="the output disk is full.*2 rows are committed in 1 shards"):
        writer.add([_row(2), _row(3)])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert read_committed(tmp_path)[1] == {"in.jsonl:0", "in.jsonl:1"}


def test_retryable_rows_leave_the_committed_shards(tmp_path):
    writer = ShardWriter(tmp_path, rows_per_shard=10)
    writer.add([_row(0), _row(1, "step_failed"), _row(2, "corrupt_image")])
    writer.flush()
    assert drop_retryable_rows(tmp_path) == 1
    assert read_committed(tmp_path)[1] == {"in.jsonl:0", "in.jsonl:2"}
    assert drop_retryable_rows(tmp_path) == 0
    [shard] = tmp_path.glob("part-*.parquet")
    assert pq.read_table(shard).column("error_kind").to_pylist() == [None, "corrupt_image"]
