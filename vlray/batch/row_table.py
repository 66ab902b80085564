"""BatchRows <-> an Arrow table: the form rows travel in between the batch job's Ray Data stages.

Every part of a row is a plain Arrow column, visible to anything that reads the table and tied to no Python
class layout (Ray's own LLM stages pass rows the same way):

  source                 string          file:line or file, the row's identity in the job
  request                string          the input's request fields as JSON (images given as bytes: null)
  request_images         list<binary>    the request's images given as bytes, in the order of those nulls
  request_id, input_ids  string, list<int32>          after preprocessing ...
  mm_token_type_ids      list<int8>
  image_grid_thw         list<list<int64>>            [num_images, 3]
  image_hashes           list<string>
  image_pixels           list<binary>    each image's resized uint8 pixels, [H, W, 3] in row-major order
  image_sizes            list<list<int32>>            each image's [H, W]
  sampling               string          SamplingParams' fields as JSON, whatever fields it has
  result                 string          the GenerationResult as JSON (pydantic's), once the row is done
  extra.<name>           any             a carried-through column of a Parquet input, its own Arrow type
  extra_json.<name>      string          a carried-through field of a JSONL input, as the JSON it was

Images cross as the processor's resized uint8 pixels, not float32 patches: 8x fewer bytes through the object
store; the model actor makes the patches (vlray/inputs/resized_image.py). Every column has a fixed type, whatever
a block holds, so Ray Data can join blocks into one batch; carried columns keep the input's own types (Parquet)
or its own text (JSONL), and stages pass them on without reading them (`carried_columns`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pyarrow as pa

from vlray.batch.rows import BatchRow
from vlray.inputs.prepared_request import PreparedRequest, SamplingParams
from vlray.schema import GenerationResult, RequestError

ARROW_EXTRA = "extra."
JSON_EXTRA = "extra_json."


def rows_to_table(rows: list[BatchRow], carried: pa.Table | None = None) -> pa.Table:
    """The rows as Arrow columns (see the module's docstring), with `carried` (one row per row) beside them.

    BatchRow.extra is not read: carried columns come from `carried` (json_extras, or the input's own columns)."""
    requests = [_encode_request(row) for row in rows]
    prepared = [row.prepared for row in rows]
    columns: dict[str, pa.Array] = {
        "source": pa.array([row.source for row in rows], type=pa.string()),
        "request": pa.array([r[0] for r in requests], type=pa.string()),
        "request_images": pa.array([r[1] for r in requests], type=pa.list_(pa.binary())),
        **_prepared_columns(prepared),
        "result": pa.array([row.result.model_dump_json() if row.result is not None else None for row in rows],
                           type=pa.string()),
    }
    if carried is not None and carried.num_columns:
        if carried.num_rows != len(rows):
            raise ValueError(f"{carried.num_rows} rows of carried columns for {len(rows)} rows")
        columns.update(zip(carried.column_names, carried.columns))
    return pa.table(columns)


def table_to_rows(table: pa.Table, with_extra: bool = False) -> list[BatchRow]:
    """The rows a rows_to_table table holds; their carried columns too (`extra`) when asked (the writer)."""
    core = [name for name in table.column_names if not name.startswith((ARROW_EXTRA, JSON_EXTRA))]
    data = {name: table.column(name).to_pylist() for name in core}
    extras = _decoded_extras(table) if with_extra else [{} for _ in range(table.num_rows)]
    rows = []
    for i, source in enumerate(data["source"]):
        result = data["result"][i]
        rows.append(BatchRow(
            source=source,
            extra=extras[i],
            request=_decode_request(data["request"][i], data["request_images"][i]),
            prepared=_decode_prepared(data, i),
            result=GenerationResult.model_validate_json(result) if result is not None else None,
        ))
    return rows


def carried_columns(table: pa.Table) -> pa.Table:
    """The carried-through columns of a row table, for a stage to pass on untouched."""
    return table.select([name for name in table.column_names if name.startswith((ARROW_EXTRA, JSON_EXTRA))])


def json_extras(extras: list[dict[str, Any]]) -> pa.Table:
    """Carried-through fields of JSONL rows as JSON text columns (a field a row lacks: null)."""
    names = list(dict.fromkeys(k for extra in extras for k in extra))
    return pa.table({JSON_EXTRA + name: pa.array([json.dumps(e[name]) if name in e else None for e in extras],
                                                 type=pa.string()) for name in names})


def arrow_extras(table: pa.Table, names: list[str]) -> pa.Table:
    """Columns of an input table carried through as they are (their Arrow types kept)."""
    return pa.table({ARROW_EXTRA + name: table.column(name) for name in names})


def _decoded_extras(table: pa.Table) -> list[dict[str, Any]]:
    extras: list[dict[str, Any]] = [{} for _ in range(table.num_rows)]
    for name in table.column_names:
        if name.startswith(ARROW_EXTRA):
            for extra, value in zip(extras, table.column(name).to_pylist()):
                extra[name[len(ARROW_EXTRA):]] = value
        elif name.startswith(JSON_EXTRA):
            for extra, text in zip(extras, table.column(name).to_pylist()):
                if text is not None:
                    extra[name[len(JSON_EXTRA):]] = json.loads(text)
    return extras


# -- the request (before preprocessing) -----------------------------------------------------------------

def _encode_request(row: BatchRow) -> tuple[str | None, list[bytes] | None]:
    """(JSON of the fields with bytes images as null, those bytes); a field JSON cannot hold fails the row."""
    if row.request is None:
        return None, None
    fields = dict(row.request)
    images = fields.get("images")
    if isinstance(images, (str, bytes)):
        images = [images]
    blobs: list[bytes] = []
    if isinstance(images, list):
        fields["images"] = [None if isinstance(im, bytes) else im for im in images]
        blobs = [im for im in images if isinstance(im, bytes)]
    try:
        return json.dumps(fields), blobs
    except (TypeError, ValueError) as exc:  # a value JSON has no form for (a timestamp cell, say)
        row.result = GenerationResult.failed(str(fields.get("id")) if fields.get("id") is not None else None,
                                             RequestError(f"row {row.source}: {exc}", kind="invalid_request"))
        row.request = None
        return None, None


def _decode_request(text: str | None, blobs: list[bytes] | None) -> dict[str, Any] | None:
    if text is None:
        return None
    fields = json.loads(text)
    if isinstance(fields.get("images"), list):
        given = iter(blobs or [])
        fields["images"] = [next(given) if im is None else im for im in fields["images"]]
    return fields


# -- the prepared request (after preprocessing) ---------------------------------------------------------

def _prepared_columns(prepared: list[PreparedRequest | None]) -> dict[str, pa.Array]:
    for p in prepared:
        if p is not None and p.pixel_values is not None:
            raise ValueError(f"request {p.request_id} holds float patches; rows carry resized images "
                             "(prepare(..., make_patches=False))")

    def each(get: Any) -> list[Any]:
        return [get(p) if p is not None else None for p in prepared]

    def images(get: Any) -> list[Any]:
        return [get(p) if p is not None and p.image_grid_thw is not None else None for p in prepared]

    return {
        "request_id": pa.array(each(lambda p: p.request_id), type=pa.string()),
        "input_ids": pa.array(each(lambda p: p.input_ids.astype(np.int32)), type=pa.list_(pa.int32())),
        "mm_token_type_ids": pa.array(images(lambda p: p.mm_token_type_ids.astype(np.int8)),
                                      type=pa.list_(pa.int8())),
        "image_grid_thw": pa.array(images(lambda p: p.image_grid_thw.tolist()), type=pa.list_(pa.list_(pa.int64()))),
        "image_hashes": pa.array(each(lambda p: p.image_hashes), type=pa.list_(pa.string())),
        "image_pixels": pa.array(images(lambda p: [im.tobytes() for im in p.images]), type=pa.list_(pa.binary())),
        "image_sizes": pa.array(images(lambda p: [list(im.shape[:2]) for im in p.images]),
                                type=pa.list_(pa.list_(pa.int32()))),
        "sampling": pa.array(each(lambda p: json.dumps(dataclasses.asdict(p.sampling))), type=pa.string()),
    }


def _decode_prepared(data: dict[str, list[Any]], i: int) -> PreparedRequest | None:
    if data["request_id"][i] is None:
        return None
    grid = data["image_grid_thw"][i]
    return PreparedRequest(
        request_id=data["request_id"][i],
        input_ids=np.asarray(data["input_ids"][i], dtype=np.int64),
        sampling=SamplingParams(**json.loads(data["sampling"][i])),
        mm_token_type_ids=(np.asarray(data["mm_token_type_ids"][i], dtype=np.int32) if grid is not None else None),
        image_grid_thw=np.asarray(grid, dtype=np.int64) if grid is not None else None,
        image_hashes=list(data["image_hashes"][i]),
        # A copy: frombuffer's array is read-only, and torch warns of those when it takes one.
        images=[np.frombuffer(blob, dtype=np.uint8).reshape(h, w, 3).copy()
                for blob, (h, w) in zip(data["image_pixels"][i] or [], data["image_sizes"][i] or [])],
    )
