"""Next tokens from a step's logits, on the device: greedy rows by one argmax over the batch, sampled rows each
with its request's own seeded generator (so a request's tokens do not depend on its neighbours)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from vlray.inputs.prepared_request import SamplingParams


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Draw one token id (a 0-d tensor, left on the device) from logits [V] with temperature and top-p."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        return order[torch.multinomial(sorted_probs, 1, generator=generator)[0]]
    return torch.multinomial(probs, 1, generator=generator)[0]


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
