"""Group requests into model batches: by kind, by prompt length, cut by a token budget. Plain Python on ints.

A left-padded batch costs rows x (longest prompt + most new tokens) in activations and KV cache, so sorting by
length before cutting keeps like lengths together and padding low; the budget, not a row count, sizes a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchItem:
    """What bucketing needs to know of a request."""

    index: int
    kind: str
    num_prompt_tokens: int
    max_new_tokens: int


def batch_cost(items: Sequence[BatchItem]) -> int:
    """Token slots a left-padded batch of these items occupies: rows x (longest prompt + most new tokens)."""
    if not items:
        return 0
    return len(items) * (max(i.num_prompt_tokens for i in items) + max(i.max_new_tokens for i in items))


def plan_batches(items: Sequence[BatchItem], max_batch_tokens: int, max_batch_size: int,
                 bucket: bool = True) -> list[list[BatchItem]]:
    """Cut items into batches within the budget.

    bucket=True: kinds apart (in order of first appearance), each sorted by prompt length (ties by index).
    bucket=False: input order, kinds mixed (the baseline bucketing is measured against).
    An item over the budget on its own gets a batch of its own rather than being dropped.
    """
    if max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("max_batch_tokens and max_batch_size must be at least 1")
    if bucket:
        groups: dict[str, list[BatchItem]] = {}
        for item in items:
            groups.setdefault(item.kind, []).append(item)
        ordered = [sorted(group, key=lambda i: (i.num_prompt_tokens, i.index)) for group in groups.values()]
    else:
        ordered = [list(items)]

    batches: list[list[BatchItem]] = []
    for group in ordered:
        current: list[BatchItem] = []
        for item in group:
            if current and (len(current) == max_batch_size or batch_cost([*current, item]) > max_batch_tokens):
                batches.append(current)
                current = []
            current.append(item)
        if current:
            batches.append(current)
    return batches
