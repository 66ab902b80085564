"""Collate prepared requests into one left-padded model batch, and move it to the device.

Left padding puts every prompt's last token in the last column, so one decode step serves all rows; the
attention mask keeps pads out of attention and out of Qwen3-VL's multimodal rotary positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from vlray.inputs.prepared_request import PreparedRequest


@dataclass(slots=True)
class ModelBatch:
    """Tensors for `model.generate`, plus what was padded."""

    input_ids: torch.Tensor  # [B, T] int64, left padded
    attention_mask: torch.Tensor  # [B, T] int64, 0 on pads
    mm_token_type_ids: torch.Tensor | None = None  # [B, T] int32, 1 on image tokens
    pixel_values: torch.Tensor | None = None  # [sum of patches, patch_dim], rows' images in row order
    image_grid_thw: torch.Tensor | None = None  # [num_images, 3]
    num_padding_tokens: int = 0
    # Vision-encoder outputs computed ahead (vlray/model/vision_encoder.py), given to generate instead of pixel_values.
    mm_encoder_outputs: dict[str, Any] | None = None

    @property
    def prompt_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for generate/forward (image tensors only when the batch has images)."""
        names = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw",
                 "mm_encoder_outputs")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def to(self, device: torch.device | str, pixel_dtype: torch.dtype, pin_memory: bool = False) -> "ModelBatch":
        """Copy to the device. With pin_memory, host tensors are page-locked first so the copies are truly
        asynchronous (non_blocking); the caller's stream orders them before the model reads them."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                if f.name == "pixel_values":
                    value = value.to(pixel_dtype)
                if pin_memory:
                    value = value.pin_memory()
                value = value.to(device, non_blocking=pin_memory)
            moved[f.name] = value
        return ModelBatch(**moved)


def collate(requests: Sequence[PreparedRequest], pad_token_id: int) -> ModelBatch:
    """Left-pad token ids and masks; concatenate image patches and grids in row order."""
    if not requests:
        raise ValueError("cannot collate an empty batch")
    longest = max(r.num_prompt_tokens for r in requests)
    rows = len(requests)
    input_ids = np.full((rows, longest), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((rows, longest), dtype=np.int64)
    has_images = any(r.pixel_values is not None for r in requests)
    mm_types = np.zeros((rows, longest), dtype=np.int32) if has_images else None
    for row, req in enumerate(requests):
        start = longest - req.num_prompt_tokens
        input_ids[row, start:] = req.input_ids
        attention_mask[row, start:] = 1
        if mm_types is not None and req.mm_token_type_ids is not None:
            mm_types[row, start:] = req.mm_token_type_ids
    batch = ModelBatch(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(attention_mask),
        num_padding_tokens=int(rows * longest - attention_mask.sum()),
    )
    if has_images:
        with_images = [r for r in requests if r.pixel_values is not None]
        batch.mm_token_type_ids = torch.from_numpy(mm_types)
        batch.pixel_values = torch.from_numpy(np.concatenate([r.pixel_values for r in with_images]))
        batch.image_grid_thw = torch.from_numpy(np.concatenate([r.image_grid_thw for r in with_images]))
    return batch
