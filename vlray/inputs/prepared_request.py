"""A request after preprocessing: token ids and image patches, ready to batch. Plain numpy, so it travels
through Ray's object store and Ray Data without torch tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TEXT_KIND = "text"
IMAGE_KIND = "image"


@dataclass(slots=True)
class SamplingParams:
    """Per-request decoding settings, resolved against the engine's defaults and the context length."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(slots=True)
class PreparedRequest:
    """Everything the model needs for one request, with no reference to the raw images."""

    request_id: str
    input_ids: np.ndarray  # [T] int64, image pads already expanded
    sampling: SamplingParams
    mm_token_type_ids: np.ndarray | None = None  # [T] int32, 1 on image tokens
    pixel_values: np.ndarray | None = None  # [num_patches, C*temporal*patch*patch] float32
    image_grid_thw: np.ndarray | None = None  # [num_images, 3] int64
    image_hashes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """text or image: the two never share a model batch (image batches run the vision encoder)."""
        return IMAGE_KIND if self.pixel_values is not None else TEXT_KIND

    @property
    def num_prompt_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_image_patches(self) -> int:
        return 0 if self.pixel_values is None else int(self.pixel_values.shape[0])
