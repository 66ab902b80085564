"""Rows between the batch job's stages: plain Arrow columns with fixed types, that give back the same rows (the
request with its image bytes, the prepared request with its resized images, the result, the carried columns),
and that Ray Data can join block to block; and 8x fewer bytes per image row than the float32 patches."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from vlray.batch.row_table import arrow_extras, carried_columns, json_extras, rows_to_table, table_to_rows
from vlray.batch.rows import BatchRow
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.inputs.resized_image import with_pixel_values
from vlray.schema import GenerationResult, RequestError


@pytest.fixture(scope="module")
def preprocessor(tiny_loaded) -> RequestPreprocessor:
    return RequestPreprocessor(tiny_loaded.processor, tiny_loaded.max_model_len, 16, 36_000_000)


@pytest.fixture
def requests(sample_images):
    return [
        {"id": "bytes", "prompt": "What?", "images": [sample_images[1].read_bytes()], "max_tokens": 5},
        {"id": "two", "prompt": "Compare.", "images": [str(sample_images[2]), sample_images[0].read_bytes()],
         "temperature": 0.7, "seed": 3, "stop": ["."]},
        {"id": "chat", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"file://{sample_images[3]}"}},
            {"type": "text", "text": "Colour?"}]}]},
        {"id": "text", "prompt": "No image here."},
    ]


def test_requests_and_carried_fields_come_back_as_they_were(requests):
    rows = [BatchRow(f"in.jsonl:{i}", {"tag": i, "meta": {"a": [1, None]} if i else "x"}, r)
            for i, r in enumerate(requests)]
    rows.append(BatchRow("in.jsonl:9", {}, result=GenerationResult.failed(None, RequestError("bad", "malformed_json"))))
    table = rows_to_table(rows, json_extras([row.extra for row in rows]))
    assert "blob" not in table.column_names and table.schema.field("request_images").type == pa.list_(pa.binary())
    back = table_to_rows(table, with_extra=True)
    assert [(b.source, b.request, b.extra, b.result) for b in back] == [(r.source, r.request, r.extra, r.result)
                                                                         for r in rows]
    assert all(b.extra == {} for b in table_to_rows(table))  # stages pass carried columns on without reading them
    assert carried_columns(table).column_names == ["extra_json.tag", "extra_json.meta"]


def test_prepared_requests_come_back_and_make_the_same_patches(preprocessor, requests, tiny_loaded):
    rows = [BatchRow(r["id"], prepared=preprocessor.prepare(r, make_patches=False)) for r in requests]
    back = table_to_rows(rows_to_table(rows))
    for request, row in zip(requests, back):
        expected = preprocessor.prepare(request)
        got = with_pixel_values(row.prepared, tiny_loaded.processor)
        for name in ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
            a, b = getattr(expected, name), getattr(got, name)
            assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b)), (request["id"], name)
        assert (got.sampling, got.image_hashes, got.kind, got.request_id) == (
            expected.sampling, expected.image_hashes, expected.kind, expected.request_id)


def test_rows_with_patches_are_refused(preprocessor, requests):
    with pytest.raises(ValueError, match="resized images"):
        rows_to_table([BatchRow("s", prepared=preprocessor.prepare(requests[0]))])


def test_a_request_field_json_cannot_hold_fails_that_row_only():
    import datetime

    rows = [BatchRow("a", request={"id": "a", "prompt": "hi", "seed": datetime.date(2026, 1, 1)}),
            BatchRow("b", request={"id": "b", "prompt": "hi"})]
    back = table_to_rows(rows_to_table(rows))
    assert back[0].result.error_kind == "invalid_request" and back[0].request is None
    assert back[1].request == {"id": "b", "prompt": "hi"} and back[1].result is None


def test_blocks_of_any_content_join_into_one_batch(preprocessor, requests):
    """Ray Data concatenates blocks into a window: every column's type must not depend on what a block holds."""
    text_only = rows_to_table([BatchRow("t", prepared=preprocessor.prepare(requests[3], make_patches=False))])
    with_image = rows_to_table([BatchRow("i", prepared=preprocessor.prepare(requests[0], make_patches=False))])
    failed = rows_to_table([BatchRow("f", result=GenerationResult.failed("f", "boom"))])
    joined = pa.concat_tables([text_only, with_image, failed])
    assert [r.source for r in table_to_rows(joined)] == ["t", "i", "f"]


def test_table_columns_keep_their_arrow_types():
    source = pa.table({"score": pa.array([1.5, None], type=pa.float32()), "when": pa.array([1, 2], pa.timestamp("s"))})
    rows = [BatchRow("a", request={"id": "a", "prompt": "x"}), BatchRow("b", request={"id": "b", "prompt": "y"})]
    table = rows_to_table(rows, arrow_extras(source, ["score", "when"]))
    assert table.schema.field("extra.score").type == pa.float32()
    assert table.schema.field("extra.when").type == pa.timestamp("s")
    assert [r.extra["score"] for r in table_to_rows(table, with_extra=True)] == [1.5, None]


def test_an_image_row_is_eight_times_smaller_than_its_patches(preprocessor, requests):
    """The figure the issue asks for: bytes per image row through the object store, before (a pickled BatchRow
    with float32 patches) and after (this table, resized uint8 images)."""
    before = len(pickle.dumps(BatchRow("s", prepared=preprocessor.prepare(requests[0])), protocol=5))
    after = rows_to_table([BatchRow("s", prepared=preprocessor.prepare(requests[0], make_patches=False))]).nbytes
    assert after * 7 < before
