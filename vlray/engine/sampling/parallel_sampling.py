"""n samples of one prompt (OpenAI's `n`): n requests that share the prompt, each with its own seed stream.

They carry the original request's id as their `prefix_group`; the scheduler admits the first and the others
once its prefill has committed the prompt's blocks, so the prompt, images included, is prefilled once.
"""

from __future__ import annotations

import dataclasses

from vlray.inputs.prepared_request import SEED_RANGE, PreparedRequest


def expand_samples(prepared: PreparedRequest, n: int) -> list[PreparedRequest]:
    """n copies with request ids `{id}/{i}`; seed + i (mod 2**64) for copy i when the request has a seed, else
    each its own random seed. The arrays are shared, not copied (nothing changes them)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive whole number")
    seed = prepared.sampling.seed
    samples = []
    for i in range(n):
        sampling = dataclasses.replace(prepared.sampling, stop=list(prepared.sampling.stop),
                                       seed=None if seed is None else (seed + i) % SEED_RANGE)
        samples.append(dataclasses.replace(prepared, request_id=f"{prepared.request_id}/{i}", sampling=sampling,
                                           prefix_group=prepared.request_id))
    return samples
