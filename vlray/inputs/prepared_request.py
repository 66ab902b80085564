"""A request after preprocessing: token ids and image patches, ready to batch. Plain numpy, so it travels
through Ray's object store and Ray Data without torch tensors.

Its images are in one of two forms: `pixel_values`, the float32 patches the model takes, or `images`, the
resized uint8 pixels they are made from (vlray/inputs/resized_image.py), 8x smaller: the form in which they
cross from the batch job's preprocess actors to its model actors, which make the patches."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

TEXT_KIND = "text"
IMAGE_KIND = "image"

GREEDY_TEMPERATURE_BELOW = 1e-5
"""A temperature under this is greedy: dividing logits by less overflows (1e-300 is 0 in fp32, then inf/nan)."""
MIN_TOP_P = 1e-6
"""top_p is raised to this: a smaller one is 0 in fp32, and top-p would then keep no token at all."""
SEED_RANGE = 2**64
"""torch.Generator takes seeds in [0, 2**64) (a negative one as its two's complement): any integer is reduced."""


MIN_REPETITION_PENALTY = 1e-2
"""repetition_penalty is raised to this: it divides logits, and a tinier one takes them to inf (then NaN)."""
MAX_LOGPROBS = 20
"""The most top logprobs a request may ask for (OpenAI's and vLLM's limit)."""
MAX_TOP_K = 2**31 - 1
"""top_k is lowered to this (any value at or above the vocabulary keeps every token; a huge one must not
overflow a tensor)."""

# name -> (lowest, highest, lowest is excluded): the ranges vLLM and OpenAI give these fields.
_FLOAT_RANGES = {
    "temperature": (0.0, math.inf, False),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, False),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
    "repetition_penalty": (0.0, 2.0, True),
}


def bounded_value(name: str, value: Any) -> Any:
    """One sampling field made computable, or a ValueError naming it: NaN/inf and values out of range refused,
    a tiny temperature greedy, a tiny top_p or repetition_penalty floored, a huge top_k lowered, any integer seed
    reduced."""
    if value is None and name in ("seed", "logprobs"):
        return None
    if name in _FLOAT_RANGES:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's scalars are Real too
            raise ValueError(f"{name}={value!r} is not a number")
        try:
            value = float(value)
        except OverflowError:  # an int past float's range
            raise ValueError(f"{name}={value!r} is out of range") from None
        if not math.isfinite(value):
            raise ValueError(f"{name}={value!r} is not a finite number")
        low, high, open_low = _FLOAT_RANGES[name]
        if value < low or (open_low and value == low) or value > high:
            bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]" if math.isfinite(high) else f"{low:g} or more"
            raise ValueError(f"{name}={value!r} must be in {bounds}")
        if name == "temperature":
            return 0.0 if value < GREEDY_TEMPERATURE_BELOW else value
        if name == "repetition_penalty":
            return max(value, MIN_REPETITION_PENALTY)
        return max(value, MIN_TOP_P) if name == "top_p" else value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} is not a whole number")
    value = int(value)
    if name == "seed":
        return value % SEED_RANGE
    if name == "top_k":
        if value < -1:
            raise ValueError(f"top_k={value!r} must be 0 or -1 (off), or a positive number of tokens")
        return min(max(value, 0), MAX_TOP_K)  # -1 is vLLM's "off", 0 OpenAI-style clients' and transformers'
    if name == "logprobs":
        if not 0 <= value <= MAX_LOGPROBS:
            raise ValueError(f"logprobs={value!r} must be in [0, {MAX_LOGPROBS}]")
        return value
    raise KeyError(name)


def bounded_sampling(temperature: float, top_p: float, seed: int | None) -> tuple[float, float, int | None]:
    """Every value a client may send made computable: NaN/inf refused (ValueError naming the field), a tiny
    temperature greedy, a tiny top_p floored, any integer seed reduced to the generator's range."""
    return (bounded_value("temperature", temperature), bounded_value("top_p", top_p), bounded_value("seed", seed))


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """Decoding constrained to JSON: any JSON object, or JSON that validates against a schema."""

    kind: Literal["json_object", "json_schema"]
    schema: str | None = None  # the JSON Schema as JSON text (json_schema only)

    def __post_init__(self) -> None:
        if self.kind not in ("json_object", "json_schema"):
            raise ValueError(f"structured output kind={self.kind!r}: use json_object or json_schema")
        if (self.kind == "json_schema") != (self.schema is not None):
            raise ValueError("a json_schema structured output needs its schema, and json_object takes none")


BOUNDED_FIELDS = ("temperature", "top_p", "seed", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                  "repetition_penalty", "logprobs")
"""The SamplingParams fields bounded_value checks (the same names on GenerationRequest)."""


@dataclass(slots=True)
class SamplingParams:
    """Per-request decoding settings, resolved against the engine's defaults and the context length."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    presence_penalty: float = 0.0  # [-2, 2], over the request's generated tokens (OpenAI/vLLM)
    frequency_penalty: float = 0.0  # [-2, 2], over the request's generated tokens
    repetition_penalty: float = 1.0  # (0, 2], over prompt + generated tokens (transformers/vLLM)
    logprobs: int | None = None  # None: no logprobs; k in 0..20: the chosen token's logprob and the k most likely
    structured: StructuredOutput | None = None

    def __post_init__(self) -> None:
        # The one place sampling values are bounded: requests from the schema, batch rows and Python calls alike.
        for name in BOUNDED_FIELDS:
            setattr(self, name, bounded_value(name, getattr(self, name)))
        if isinstance(self.structured, dict):  # from a batch row's JSON (dataclasses.asdict)
            self.structured = StructuredOutput(**self.structured)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        """Whether the logits need the request's token counts before anything else."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    @property
    def has_filters(self) -> bool:
        """Whether a sampled row needs its distribution cut (top_k, top_p, min_p)."""
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0


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
    prefix_group: str | None = None  # samples of one prompt (n > 1): the engine prefills the prompt once

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
