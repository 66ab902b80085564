"""Benchmark workloads: mixed image sizes, text-only rows and prompts of different lengths."""

from __future__ import annotations

import random
from typing import Any

from jobs.sample_images import make_image

_PROMPTS = [
    "What is in this image?",
    "Describe the picture in detail: the colours, the shapes and where they are.",
    "Read any text you can see.",
    "Count the objects.",
    "Write a short caption for this photo, then list three things a person might do here, and why.",
]
_TEXT_PROMPTS = [
    "Hello!",
    "Name three colours.",
    "Explain in a few sentences how a camera turns light into a picture, and what the lens does.",
    "Write a haiku about a red car on a rainy street at night, with the city lights in the puddles. " * 2,
]
IMAGE_SIZES = [(64, 64), (128, 96), (320, 240), (256, 512), (640, 480), (800, 600), (1024, 768)]


def mixed_workload(num_requests: int, max_tokens: int, seed: int = 0, text_fraction: float = 0.3,
                   sizes: list[tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """Requests with images of varied sizes (64x64 to 1024x768) and some text-only ones, in shuffled order."""
    rng = random.Random(seed)
    sizes = sizes or IMAGE_SIZES
    requests = []
    for i in range(num_requests):
        if rng.random() < text_fraction:
            requests.append({"id": f"t{i}", "prompt": rng.choice(_TEXT_PROMPTS), "max_tokens": max_tokens})
        else:
            width, height = rng.choice(sizes)
            requests.append({"id": f"i{i}", "prompt": rng.choice(_PROMPTS),
                             "images": [make_image(width, height, seed=i)], "max_tokens": max_tokens})
    return requests
