"""An image as the processor resized it (uint8 pixels and the patch grid), and its patches made from that.

The image processor's work splits in two: resize (smart_resize to a multiple of patch x merge), then rescale,
normalise and cut into patches. The first half's output, uint8 [H, W, 3], is what the preprocessed-image cache
keeps and what crosses the object store between batch-job stages: 8x smaller than the float32 patches (each
pixel is 3 channels x 2 temporal copies x 4 bytes there). The second half runs where the model is, through the
processor's own call with resizing off, so the patches are exactly the processor's (tests/inputs check it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from transformers import ProcessorMixin

from vlray.inputs.prepared_request import PreparedRequest
from vlray.schema import RequestError


@dataclass(frozen=True, slots=True)
class ResizedImage:
    """One image after the processor's resize, before its normalisation."""

    pixels: np.ndarray  # [H, W, 3] uint8, H and W multiples of patch_size * merge_size
    image_grid_thw: np.ndarray  # [1, 3] int64: (1, H / patch_size, W / patch_size)
    content_hash: str


def resize_image(processor: ProcessorMixin, image: Image.Image, content_hash: str) -> ResizedImage:
    """The processor's own resize of `image` (RGB), read back from its patches with rescale and normalise off."""
    image_processor = processor.image_processor
    try:
        out = image_processor(images=[image], do_rescale=False, do_normalize=False, return_tensors="np")
    except ValueError as exc:  # e.g. smart_resize refusing a shape
        raise RequestError(f"image preprocessing failed: {exc}", kind="invalid_image") from None
    grid = np.asarray(out["image_grid_thw"], dtype=np.int64)
    return ResizedImage(unpatchify(np.asarray(out["pixel_values"]), grid[0], image_processor), grid, content_hash)


def unpatchify(patches: np.ndarray, grid_thw: np.ndarray, image_processor: object) -> np.ndarray:
    """[t*h*w, C*T*P*P] patches of one image (un-normalised) -> its [H, W, C] uint8 pixels (the first frame)."""
    patch, merge, temporal = (image_processor.patch_size, image_processor.merge_size,  # type: ignore[attr-defined]
                              image_processor.temporal_patch_size)  # type: ignore[attr-defined]
    _, grid_h, grid_w = (int(v) for v in grid_thw)
    channels = patches.shape[1] // (temporal * patch * patch)
    # The processor's order: [h/M, w/M, M, M, C, T, P, P]; back to [h/M, M, P, w/M, M, P, C] = [H, W, C].
    blocks = patches.reshape(grid_h // merge, grid_w // merge, merge, merge, channels, temporal, patch, patch)
    pixels = blocks[:, :, :, :, :, 0].transpose(0, 2, 5, 1, 3, 6, 4).reshape(grid_h * patch, grid_w * patch, channels)
    as_bytes = pixels.astype(np.uint8)
    if not np.array_equal(as_bytes, pixels):
        raise ValueError("the processor's resized image is not whole uint8 values; it cannot travel as bytes")
    return np.ascontiguousarray(as_bytes)


def patchify(processor: ProcessorMixin, images: Sequence[np.ndarray]) -> np.ndarray:
    """[sum of patches, C*T*P*P] float32: the processor's rescale, normalise and patches of resized images."""
    out = processor.image_processor(images=list(images), do_resize=False, input_data_format="channels_last",
                                    return_tensors="np")
    return np.ascontiguousarray(out["pixel_values"], dtype=np.float32)


def with_pixel_values(prepared: PreparedRequest, processor: ProcessorMixin) -> PreparedRequest:
    """The request with its resized images turned into the patches the model takes (unchanged when it has none
    or has patches already)."""
    if not prepared.images:
        return prepared
    return dataclasses.replace(prepared, pixel_values=patchify(processor, prepared.images), images=[])
