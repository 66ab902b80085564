"""Preprocessed images by content: pixel patches and grid, keyed by SHA-256(image bytes + processor settings).

On a hit the image is read and hashed but never decoded or resized. The text half of the processor's call
(image placeholders expanded to the grid's token count, tokenized, multimodal token types) is then done with the
processor's own public methods, so the result is what `processor(text=..., images=...)` returns, field for field
(tests/test_preprocessed_image_cache.py checks it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from transformers import ProcessorMixin

from vlray.cache.keys import BlobCache, preprocessed_image_key, processor_settings
from vlray.inputs.image_input import load_image, read_image_bytes
from vlray.inputs.image_policy import DEFAULT_IMAGE_POLICY, ImagePolicy
from vlray.schema import ImageSource, RequestError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProcessedImage:
    """One image as the model takes it."""

    pixel_values: np.ndarray  # [patches, C*temporal*patch*patch] float32
    image_grid_thw: np.ndarray  # [1, 3] int64
    content_hash: str


class PreprocessedImageCache:
    """Loads and processes images through a cache; bad images raise RequestError as load_image does."""

    def __init__(self, processor: ProcessorMixin, cache: BlobCache, max_input_pixels: int,
                 policy: ImagePolicy = DEFAULT_IMAGE_POLICY) -> None:
        self.processor = processor
        self.cache = cache
        self.max_input_pixels = max_input_pixels
        self.policy = policy  # bytes are read through it before the lookup: a hit obeys it too
        self.settings = processor_settings(processor)
        self.num_hits = 0
        self.num_misses = 0

    def load(self, sources: Sequence[ImageSource]) -> list[ProcessedImage]:
        """Each image's patches and grid, in order."""
        raw: list[bytes | Image.Image] = []
        hashes: list[str] = []
        for source in sources:
            if isinstance(source, Image.Image):
                loaded = load_image(source, self.max_input_pixels)
                raw.append(loaded.image)
                hashes.append(loaded.content_hash)
            else:
                data = read_image_bytes(source, self.policy)
                raw.append(data)
                hashes.append(hashlib.sha256(data).hexdigest())
        keys = [preprocessed_image_key(h, self.settings, self.max_input_pixels) for h in hashes]
        found = self._lookup(keys, hashes)
        processed, stored = [], {}
        for key, content_hash, item in zip(keys, hashes, raw):
            if key not in found:
                image = self._process(item, content_hash)
                found[key] = image
                stored[key] = save_arrays({"pixel_values": image.pixel_values, "image_grid_thw": image.image_grid_thw})
                self.num_misses += 1
            else:
                self.num_hits += 1
            processed.append(found[key])
        if stored:
            self.cache.put_many(stored)
        return processed

    def _lookup(self, keys: list[str], hashes: list[str]) -> dict[str, ProcessedImage]:
        found = {}
        for key, data in self.cache.get_many(list(dict.fromkeys(keys))).items():
            try:
                arrays = load_arrays(data)
                pixels, grid = arrays["pixel_values"], arrays["image_grid_thw"]
                if grid.shape != (1, 3) or pixels.ndim != 2 or pixels.shape[0] != int(grid.prod()):
                    raise ValueError(f"patches {pixels.shape} do not match grid {grid.tolist()}")
            except (SafetensorError, KeyError, ValueError) as exc:
                log.warning("cached preprocessed image %s is unusable (%s); processing it again", key, exc)
                continue
            found[key] = ProcessedImage(pixels, grid, hashes[keys.index(key)])
        return found

    def _process(self, item: bytes | Image.Image, content_hash: str) -> ProcessedImage:
        image = load_image(item, self.max_input_pixels).image
        try:
            out = self.processor.image_processor(images=[image], return_tensors="np")
        except ValueError as exc:  # e.g. smart_resize refusing a shape
            raise RequestError(f"image preprocessing failed: {exc}", kind="invalid_image") from None
        return ProcessedImage(np.ascontiguousarray(out["pixel_values"], dtype=np.float32),
                              np.asarray(out["image_grid_thw"], dtype=np.int64), content_hash)


def tokenize_with_images(processor: ProcessorMixin, text: str, grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids [T], mm_token_type_ids [T]) for a chat text whose images were processed already.

    The same steps as the processor's own __call__: each image placeholder expanded to its grid's token count,
    then the tokenizer with the processor's text defaults, then the multimodal token types.
    """
    replacements = [processor.replace_image_token({"image_grid_thw": grids}, i) for i in range(len(grids))]
    texts, _ = processor.get_text_with_replacements([text], replacements)
    encoded = processor.tokenizer(texts, return_token_type_ids=False, return_tensors="np")
    input_ids = np.asarray(encoded["input_ids"][0], dtype=np.int64)
    mm_types = np.asarray(processor.create_mm_token_type_ids(encoded["input_ids"])[0], dtype=np.int32)
    return input_ids, mm_types
