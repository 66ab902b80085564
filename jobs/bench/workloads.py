"""Benchmark workloads: mixed image sizes, text-only rows and prompts of different lengths."""

from __future__ import annotations

import io
import random
from typing import Any

from PIL import Image

from vlray.testing.sample_images import make_image

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


def questions_per_image_workload(num_images: int, num_questions: int, max_tokens: int, seed: int = 0,
                                 sizes: list[tuple[int, int]] | None = None) -> list[list[dict[str, Any]]]:
    """`num_questions` rounds, each asking one question about every image (a job re-run with a new prompt).

    Images are encoded bytes (PNG or JPEG), as read from files; each round visits them in its own order.
    """
    rng = random.Random(seed)
    sizes = sizes or IMAGE_SIZES
    images = [_encoded(make_image(*rng.choice(sizes), seed=seed + i), "PNG" if i % 2 else "JPEG")
              for i in range(num_images)]
    questions = (_PROMPTS * (num_questions // len(_PROMPTS) + 1))[:num_questions]
    rounds = []
    for q, question in enumerate(questions):
        order = list(range(num_images))
        rng.shuffle(order)  # each round in its own order, so an image comes back after shorter or longer gaps
        rounds.append([{"id": f"q{q}-img{i}", "prompt": question, "images": [images[i]], "max_tokens": max_tokens}
                       for i in order])
    return rounds


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
