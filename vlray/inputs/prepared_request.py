"""A request after preprocessing: token ids and image patches, ready to batch. Plain numpy, so it travels
through Ray's object store and Ray Data without torch tensors.

Its images are in one of two forms: `pixel_values`, the float32 patches the model takes, or `images`, the
resized uint8 pixels they are made from (vlray/inputs/resized_image.py), 8x smaller: the form in which they
cross from the batch job's preprocess actors to its model actors, which make the patches."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TEXT_KIND = "text"
IMAGE_KIND = "image"

GREEDY_TEMPERATURE_BELOW = 1e-5
"""A temperature under this is greedy: dividing logits by less overflows (1e-300 is 0 in fp32, then inf/nan)."""
MIN_TOP_P = 1e-6
"""top_p is raised to this: a smaller one is 0 in fp32, and top-p would then keep no token at all."""
SEED_RANGE = 2**64
"""torch.Generator takes seeds in [0, 2**64) (a negative one as its two's complement): any integer is reduced."""


def bounded_sampling(temperature: float, top_p: float, seed: int | None) -> tuple[float, float, int | None]:
    """Every value a client may send made computable: NaN/inf refused (ValueError naming the field), a tiny
    temperature greedy, a tiny top_p floored, any integer seed reduced to the generator's range."""
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if not math.isfinite(value):
            raise ValueError(f"{name}={value!r} is not a finite number")
    if temperature < 0:
        raise ValueError(f"temperature={temperature!r} must be 0 (greedy) or more")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1]")
    temperature = 0.0 if temperature < GREEDY_TEMPERATURE_BELOW else float(temperature)
    top_p = max(float(top_p), MIN_TOP_P)
    return temperature, top_p, None if seed is None else int(seed) % SEED_RANGE


@dataclass(slots=True)
class SamplingParams:
    """Per-request decoding settings, resolved against the engine's defaults and the context length."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The one place sampling values are bounded: requests from the schema, batch rows and Python calls alike.
        self.temperature, self.top_p, self.seed = bounded_sampling(self.temperature, self.top_p, self.seed)

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
    images: list[np.ndarray] = field(default_factory=list)  # each [H, W, 3] uint8, resized; until patches are made

    @property
    def kind(self) -> str:
        """text or image: the two never share a model batch (image batches run the vision encoder)."""
        return IMAGE_KIND if self.image_grid_thw is not None else TEXT_KIND

    @property
    def num_prompt_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_image_patches(self) -> int:
        return 0 if self.image_grid_thw is None else int(np.prod(self.image_grid_thw, axis=1).sum())
