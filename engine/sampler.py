"""Next tokens from a step's logits, on the device: greedy rows by one argmax over the batch, sampled rows each
with its request's own seeded generator (so a request's tokens do not depend on its neighbours)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from engine.generation_controls import sample_token
from engine.prepared_request import SamplingParams


def make_generator(params: SamplingParams, device: str | torch.device) -> torch.Generator | None:
    """The request's generator (None for greedy): seeded by its seed, or at random."""
    if params.is_greedy:
        return None
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    return torch.Generator(device=device).manual_seed(seed)


def sample(logits: torch.Tensor, params: Sequence[SamplingParams],
           generators: Sequence[torch.Generator | None]) -> list[int]:
    """One token per row of logits [B, V] (float32); one host sync for the whole batch."""
    chosen = logits.argmax(dim=-1)  # [B]
    for row, (p, generator) in enumerate(zip(params, generators)):
        if generator is not None:
            chosen[row] = sample_token(logits[row], p.temperature, p.top_p, generator)
    return chosen.tolist()
