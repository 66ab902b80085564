"""The batch job's first stage: raw input rows -> BatchRows (requests, or error results), as row tables.

Rows travel between stages as plain Arrow columns (vlray/batch/row_table.py). Parse runs as many small Ray
tasks, so this module stays light: a task's worker imports it, and importing torch and transformers there (as
the model stages' module does) would cost seconds of CPU per worker process.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import ray
from ray.actor import ActorHandle

from actors.data.datasources import ERROR_COLUMN, LINE_COLUMN, SOURCE_COLUMN, relative_source
from actors.data.id_registry import DUPLICATE, SKIP
from vlray.batch.inputs import INPUT_IMAGES, INPUT_JSONL
from vlray.batch.row_table import arrow_extras, json_extras, rows_to_table
from vlray.batch.rows import REQUEST_FIELDS, BatchRow, parse_jsonl_line, split_row
from vlray.schema import GenerationResult, RequestError, request_id_of


# -- parse: raw rows -> BatchRow with a request (or an error), resume and duplicate checks ----------------

def parse_rows(batch: pa.Table, input_kind: str, input_root: str, defaults: dict[str, Any],
               registry: ActorHandle) -> pa.Table:
    """Turn raw input rows into requests; drop rows committed by an earlier run; flag duplicate ids.

    `defaults` (the job's --prompt, --temperature, ...) fill the fields a row does not set itself.
    """
    rows = [_parse_one(raw, input_kind, input_root, defaults) for raw in batch.to_pylist()]
    verdicts = ray.get(registry.claim.remote(
        [(r.source, request_id_of(r.request) if r.request is not None else None) for r in rows]))
    kept: list[int] = []
    for i, (row, verdict) in enumerate(zip(rows, verdicts)):
        if verdict == SKIP:
            continue
        if verdict == DUPLICATE and row.result is None:
            row_id = request_id_of(row.request)
            row.result = GenerationResult.failed(row_id, RequestError(
                f"duplicate id {row_id!r}: row {row.source} repeats an id that another row already has",
                kind="duplicate_id"))
        kept.append(i)
    return rows_to_table([rows[i] for i in kept], _carried(batch, input_kind, [rows[i] for i in kept], kept))


def _carried(batch: pa.Table, input_kind: str, rows: list[BatchRow], kept: list[int]) -> pa.Table:
    """The kept rows' carried-through columns: a table's own (their Arrow types kept), a JSONL row's fields as
    the JSON they were."""
    if input_kind == INPUT_IMAGES:
        return pa.table({})
    if input_kind == INPUT_JSONL:
        return json_extras([row.extra for row in rows])
    names = [name for name in batch.column_names if name not in REQUEST_FIELDS and name not in (SOURCE_COLUMN, ERROR_COLUMN)]
    return arrow_extras(batch.take(pa.array(kept, type=pa.int64())), names)


def _parse_one(raw: dict[str, Any], input_kind: str, input_root: str, defaults: dict[str, Any]) -> BatchRow:
    if input_kind == INPUT_IMAGES:
        source = relative_source(raw["path"], input_root)
        fields: dict[str, Any] = {"id": source, "images": [raw["bytes"]]}
    else:
        source = raw.pop(SOURCE_COLUMN)
        unreadable = raw.pop(ERROR_COLUMN, None)
        if unreadable:  # a file (or part of one) that could not be read: its rows fail, naming it
            return BatchRow(source, result=GenerationResult.failed(None, RequestError(unreadable,
                                                                                      kind="unreadable_input")))
        try:
            fields = parse_jsonl_line(raw[LINE_COLUMN], source) if input_kind == INPUT_JSONL else raw
        except RequestError as exc:
            return BatchRow(source, result=GenerationResult.failed(None, exc))
    request, extra = split_row(fields, defaults)
    return BatchRow(source, extra, request)


def parse_stage_args(input_kind: str, input_root: str, defaults: dict[str, Any], registry: ActorHandle,
                     block_rows: int) -> dict[str, Any]:
    """Light tasks (a quarter CPU): parsing is cheap, and the CPUs belong to preprocessing and generation. One
    block per task, so blocks stay as small as the read made them."""
    return dict(fn_kwargs=dict(input_kind=input_kind, input_root=input_root, defaults=defaults,
                               registry=registry),
                batch_format="pyarrow", batch_size=block_rows, num_cpus=0.25)
