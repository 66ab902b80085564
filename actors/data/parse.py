"""The batch job's first stage, and the form rows travel in between stages.

Rows travel as two columns: `source` and `blob`, a pickled BatchRow (request, prepared tensors, result). Parse
runs as many small Ray tasks, so this module stays light: a task's worker imports it, and importing torch and
transformers there (as the model stages' module does) would cost seconds of CPU per worker process.
"""

from __future__ import annotations

import pickle
from typing import Any

import pyarrow as pa
import ray
from ray.actor import ActorHandle

from actors.data.datasources import LINE_COLUMN, SOURCE_COLUMN, relative_source
from vlray.batch.inputs import INPUT_IMAGES, INPUT_JSONL
from actors.data.id_registry import DUPLICATE, SKIP
from vlray.batch.rows import BatchRow, parse_jsonl_line, split_row
from vlray.schema import GenerationResult, RequestError, request_id_of



def pack(rows: list[BatchRow]) -> pa.Table:
    return pa.table({"source": pa.array([r.source for r in rows], type=pa.string()),
                     "blob": pa.array([pickle.dumps(r, protocol=5) for r in rows], type=pa.binary())})


def unpack(batch: pa.Table) -> list[BatchRow]:
    return [pickle.loads(blob) for blob in batch.column("blob").to_pylist()]


# -- parse: raw rows -> BatchRow with a request (or an error), resume and duplicate checks ----------------

def parse_rows(batch: pa.Table, input_kind: str, input_root: str, defaults: dict[str, Any],
               registry: ActorHandle) -> pa.Table:
    """Turn raw input rows into requests; drop rows committed by an earlier run; flag duplicate ids.

    `defaults` (the job's --prompt, --temperature, ...) fill the fields a row does not set itself.
    """
    rows = [_parse_one(raw, input_kind, input_root, defaults) for raw in batch.to_pylist()]
    verdicts = ray.get(registry.claim.remote(
        [(r.source, request_id_of(r.request) if r.request is not None else None) for r in rows]))
    kept = []
    for row, verdict in zip(rows, verdicts):
        if verdict == SKIP:
            continue
        if verdict == DUPLICATE and row.result is None:
            row_id = request_id_of(row.request)
            row.result = GenerationResult.failed(row_id, RequestError(
                f"duplicate id {row_id!r}: row {row.source} repeats an id that another row already has",
                kind="duplicate_id"))
        kept.append(row)
    return pack(kept)


def _parse_one(raw: dict[str, Any], input_kind: str, input_root: str, defaults: dict[str, Any]) -> BatchRow:
    if input_kind == INPUT_IMAGES:
        source = relative_source(raw["path"], input_root)
        fields: dict[str, Any] = {"id": source, "images": [raw["bytes"]]}
    else:
        source = raw.pop(SOURCE_COLUMN)
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
