"""Collation: left padding, masks, image patches in row order."""

import numpy as np
import torch

from vlray.inputs.prepared_request import PreparedRequest, SamplingParams
from vlray.static.model_batch import collate


def _text(rid, ids):
    return PreparedRequest(rid, np.array(ids, dtype=np.int64), SamplingParams(max_tokens=4))


def _image(rid, ids, mm, patches, grid):
    return PreparedRequest(rid, np.array(ids, dtype=np.int64), SamplingParams(max_tokens=4),
                           mm_token_type_ids=np.array(mm, dtype=np.int32),
                           pixel_values=np.full((patches, 6), float(patches), dtype=np.float32),
                           image_grid_thw=np.array([grid], dtype=np.int64))


def test_text_rows_are_left_padded():
    batch = collate([_text("a", [5, 6, 7]), _text("b", [8])], pad_token_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.num_padding_tokens == 2
    assert batch.pixel_values is None and batch.mm_token_type_ids is None
    assert set(batch.model_inputs()) == {"input_ids", "attention_mask"}


def test_image_rows_keep_patch_order_and_token_types():
    first = _image("a", [1, 9, 9, 2], [0, 1, 1, 0], patches=8, grid=[1, 2, 4])
    second = _image("b", [1, 9, 2], [0, 1, 0], patches=4, grid=[1, 2, 2])
    batch = collate([first, second], pad_token_id=0)
    assert batch.mm_token_type_ids.tolist() == [[0, 1, 1, 0], [0, 0, 1, 0]]
    assert batch.pixel_values.shape == (12, 6)
    assert batch.pixel_values[:8].eq(8).all() and batch.pixel_values[8:].eq(4).all()
    assert batch.image_grid_thw.tolist() == [[1, 2, 4], [1, 2, 2]]


def test_to_casts_pixels_only():
    batch = collate([_image("a", [1, 9, 2], [0, 1, 0], 4, [1, 2, 2])], pad_token_id=0)
    moved = batch.to("cpu", torch.float16)
    assert moved.pixel_values.dtype == torch.float16
    assert moved.input_ids.dtype == torch.int64
