"""Rows of a batch job: input rows -> requests (plus the columns to carry through), results -> output rows.

Input rows follow the request schema (vlray/schema.py). Tables may carry images as a binary or string
column `image` (one image) or `images` (a list); any column that is not a request field is carried through
to the output unchanged. `source` (file:line or file) identifies a row that has no usable id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vlray.inputs.prepared_request import PreparedRequest
from vlray.schema import GenerationRequest, GenerationResult, RequestError

REQUEST_FIELDS = frozenset(GenerationRequest.model_fields) | {"image"}
RESULT_COLUMNS = ("id", "text", "finish_reason", "num_prompt_tokens", "num_generated_tokens", "error",
                  "error_kind", "source")


@dataclass(slots=True)
class BatchRow:
    """One input row on its way through the job's stages; `result` set means it is done (or failed)."""

    source: str
    extra: dict[str, Any] = field(default_factory=dict)
    request: dict[str, Any] | None = None
    prepared: PreparedRequest | None = None
    result: GenerationResult | None = None

    def output_row(self) -> dict[str, Any]:
        assert self.result is not None, "output_row() of a row that has no result yet"
        return result_row(self.result, self.source, self.extra)


def parse_jsonl_line(line: str, source: str) -> dict[str, Any]:
    """One JSONL line -> a row mapping; RequestError (kind malformed_json) when it is not a JSON object."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON at {source}: {exc.msg} (column {exc.colno})",
                           kind="malformed_json") from None
    if not isinstance(value, dict):
        raise RequestError(f"line {source} is JSON but not an object", kind="malformed_json")
    return value


def split_row(row: dict[str, Any], defaults: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request fields, carried-through columns) of an input row.

    `image` becomes a one-element `images`; None/NaN cells count as absent, as Parquet writes missing values.
    `defaults` fill absent fields; a default `prompt` applies only to rows with neither prompt nor messages.
    """
    request: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in row.items():
        if key in REQUEST_FIELDS:
            if not _is_missing(value):
                request[key] = _plain(value)
        else:
            extra[key] = value
    if "image" in request:
        request.setdefault("images", [])
        request["images"] = [request.pop("image"), *request["images"]]
    for key, value in (defaults or {}).items():
        if value is None or key in request or (key == "prompt" and "messages" in request):
            continue
        request[key] = value
    return request, extra


def result_row(result: GenerationResult, source: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    """The output row: result fields, the row's source, and its carried-through columns."""
    row = {name: getattr(result, name) for name in RESULT_COLUMNS if name != "source"}
    row["source"] = source
    for key, value in extra.items():
        if key not in row:
            row[key] = value
    return row


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (what Ray Data hands out) -> Python lists and scalars, recursively."""
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not _is_missing(v)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
