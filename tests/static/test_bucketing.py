"""Bucketing: kinds apart, sorted by length, cut by the token budget; exact batches."""

import pytest

from vlray.static.bucketing import BatchItem, batch_cost, plan_batches


def _ids(batches):
    return [[item.index for item in batch] for batch in batches]


ITEMS = [
    BatchItem(0, "text", 30, 10),
    BatchItem(1, "image", 300, 10),
    BatchItem(2, "text", 10, 10),
    BatchItem(3, "image", 100, 10),
    BatchItem(4, "text", 20, 10),
    BatchItem(5, "image", 110, 10),
]


def test_groups_by_kind_and_sorts_by_length():
    assert _ids(plan_batches(ITEMS, max_batch_tokens=10_000, max_batch_size=8)) == [[2, 4, 0], [3, 5, 1]]


def test_budget_cuts_batches():
    # Budget 100. Texts: [2,4] costs 2*(20+10)=60; adding 0 would cost 3*(30+10)=120.
    # Images: each is over 100 on its own (110, 120, 310), so each gets a batch of its own.
    batches = plan_batches(ITEMS, max_batch_tokens=100, max_batch_size=8)
    assert _ids(batches) == [[2, 4], [0], [3], [5], [1]]
    # Budget 240: [2,4,0] costs 120; [3,5] costs 2*(110+10)=240; adding 1 would cost 3*310.
    batches = plan_batches(ITEMS, max_batch_tokens=240, max_batch_size=8)
    assert _ids(batches) == [[2, 4, 0], [3, 5], [1]]


def test_row_cap():
    assert _ids(plan_batches(ITEMS, 10_000, max_batch_size=2)) == [[2, 4], [0], [3, 5], [1]]


def test_input_order_baseline_mixes_kinds():
    assert _ids(plan_batches(ITEMS, 10_000, 8, bucket=False)) == [[0, 1, 2, 3, 4, 5]]
    # [0,1] costs 2*(300+10)=620; adding 2 would cost 930 > 700. [2,3,4,5] costs 4*(110+10)=480.
    assert _ids(plan_batches(ITEMS, 700, 8, bucket=False)) == [[0, 1], [2, 3, 4, 5]]


def padding_tokens(items):
    """Pad tokens left padding adds to a batch's prompts."""
    return sum(max(i.num_prompt_tokens for i in items) - i.num_prompt_tokens for i in items)


def test_cost_and_padding():
    assert batch_cost([]) == 0
    assert batch_cost([ITEMS[0], ITEMS[2]]) == 2 * (30 + 10)
    assert padding_tokens([ITEMS[0], ITEMS[2], ITEMS[4]]) == 20 + 10
    sorted_pad = sum(padding_tokens(b) for b in plan_batches(ITEMS, 400, 3))
    unsorted_pad = sum(padding_tokens(b) for b in plan_batches(ITEMS, 400, 3, bucket=False))
    assert sorted_pad < unsorted_pad


def test_every_item_lands_once():
    items = [BatchItem(i, "text" if i % 3 else "image", (i * 37) % 101 + 1, 5) for i in range(200)]
    batches = plan_batches(items, 500, 16)
    assert sorted(i for b in batches for i in (item.index for item in b)) == list(range(200))
    assert all(len(b) <= 16 and (batch_cost(b) <= 500 or len(b) == 1) for b in batches)
    assert all(len({item.kind for item in b}) == 1 for b in batches)


def test_invalid_limits():
    with pytest.raises(ValueError):
        plan_batches(ITEMS, 0, 4)
