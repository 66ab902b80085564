"""The scheduler, step by step with exact expectations: joins, budgets, finishing, preemption by recompute."""

import pytest

from vlray.engine.block_manager import BlockManager
from vlray.engine.scheduler import Scheduler
from vlray.engine.sequence import Sequence, SequenceStatus

BS = 4


def _seq(seq_id, num_tokens, max_tokens=8):
    return Sequence(seq_id, list(range(seq_id * 1000, seq_id * 1000 + num_tokens)), max_tokens)


def _ids(seqs):
    return [s.seq_id for s in seqs]


def _run(scheduler, step):
    """What the engine does after a step: every scheduled sequence computed its tokens and got a new one."""
    for seq in step.prefills + step.decodes:
        seq.num_computed_tokens = len(seq)
        scheduler.block_manager.commit_computed(seq)
        seq.append_token(7)


def _num_tokens(step):
    """Tokens the step computes: one per decode, each prefill's prompt less its cached prefix."""
    return len(step.decodes) + sum(len(s) - s.num_cached_tokens for s in step.prefills)


def test_budget_and_seats_decide_who_joins():
    scheduler = Scheduler(BlockManager(range(1, 65), BS), max_num_seqs=3, max_num_batched_tokens=20)
    for i, n in enumerate([8, 10, 6, 3]):
        scheduler.add(_seq(i, n))
    step = scheduler.schedule()
    assert _ids(step.prefills) == [0, 1]  # 8 + 10 = 18 tokens; the third (6) would pass 20
    assert _num_tokens(step) == 18
    _run(scheduler, step)
    step = scheduler.schedule()
    assert _ids(step.decodes) == [0, 1] and _ids(step.prefills) == [2]  # 2 decode tokens + 6
    _run(scheduler, step)
    step = scheduler.schedule()
    assert _ids(step.decodes) == [0, 1, 2] and step.prefills == []  # three seats taken
    assert _ids(scheduler.waiting) == [3]


def test_a_finished_sequence_frees_its_seat_for_the_next_step():
    scheduler = Scheduler(BlockManager(range(1, 65), BS), max_num_seqs=2, max_num_batched_tokens=100)
    seqs = [_seq(i, 5) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    step = scheduler.schedule()
    assert _ids(step.prefills) == [0, 1]
    _run(scheduler, step)
    free_before = scheduler.block_manager.num_free_blocks
    scheduler.finish(seqs[0])
    assert seqs[0].status is SequenceStatus.FINISHED and seqs[0].block_table == []
    assert scheduler.block_manager.num_free_blocks == free_before + 2
    step = scheduler.schedule()
    assert _ids(step.decodes) == [1] and _ids(step.prefills) == [2]


def test_one_long_prompt_runs_alone_over_the_budget():
    scheduler = Scheduler(BlockManager(range(1, 65), BS), max_num_seqs=4, max_num_batched_tokens=8)
    scheduler.add(_seq(0, 30))
    scheduler.add(_seq(1, 2))
    step = scheduler.schedule()
    assert _ids(step.prefills) == [0]
    _run(scheduler, step)
    assert _ids(scheduler.schedule().prefills) == [1]


def test_preemption_frees_the_newest_and_it_comes_back_with_its_tokens():
    # 6 blocks of 4 tokens. Three sequences of 7 tokens take 2 blocks each: the cache is full.
    manager = BlockManager(range(1, 7), BS)
    scheduler = Scheduler(manager, max_num_seqs=4, max_num_batched_tokens=100)
    seqs = [_seq(i, 7) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    step = scheduler.schedule()
    assert _ids(step.prefills) == [0, 1, 2] and manager.num_free_blocks == 0
    _run(scheduler, step)  # each now has 8 tokens: the 8th needs no new block
    step = scheduler.schedule()
    assert _ids(step.decodes) == [0, 1, 2] and step.preempted == []
    _run(scheduler, step)  # 9 tokens each: the 9th needs a third block, and none is free
    step = scheduler.schedule()
    # 0 needs a block: the newest (2) is preempted and its 2 blocks freed; 0 and 1 each take one.
    assert _ids(step.preempted) == [2] and _ids(step.decodes) == [0, 1]
    assert seqs[2].status is SequenceStatus.WAITING and seqs[2].block_table == []
    assert seqs[2].output_token_ids == [7, 7]
    assert _ids(scheduler.waiting) == [2] and step.prefills == []  # nothing joins in a preempting step
    _run(scheduler, step)
    scheduler.finish(seqs[0])
    step = scheduler.schedule()
    # Back with all 9 of its tokens to recompute (prompt 7 + 2 generated).
    assert _ids(step.decodes) == [1] and _ids(step.prefills) == [2]
    assert len(seqs[2]) == 9 and len(seqs[2].block_table) == 3


def test_a_sequence_that_can_never_fit_is_refused():
    scheduler = Scheduler(BlockManager(range(1, 3), BS), max_num_seqs=2, max_num_batched_tokens=100)
    with pytest.raises(ValueError, match="needs 12 tokens of KV cache; the cache holds 8"):
        scheduler.add(_seq(0, 4, max_tokens=8))


def test_prefix_hits_cost_no_budget():
    scheduler = Scheduler(BlockManager(range(1, 65), BS), max_num_seqs=4, max_num_batched_tokens=12)
    first = Sequence(0, list(range(9)), 4)
    scheduler.add(first)
    _run(scheduler, scheduler.schedule())
    twin = Sequence(1, list(range(9)), 4)
    scheduler.add(twin)
    step = scheduler.schedule()
    assert _ids(step.prefills) == [1]
    assert twin.num_cached_tokens == 8 and _num_tokens(step) == 1 + 1  # one decode + one prompt token


def test_best_split_of_decode_rows_by_context():
    from vlray.engine.runner.decode import best_split

    assert best_split([]) == 0
    assert best_split([10]) == 0
    assert best_split([10, 10, 11, 12]) == 0  # alike: one group
    # Three short rows and two long: padding everyone to 40 blocks costs 200, two groups 3*4 + 2*40 = 92.
    assert best_split([2, 3, 4, 40, 40]) == 3
    assert best_split([2, 3, 4, 40, 40], min_saving=0.9) == 0


def _sample_of(seq_id, prompt, group):
    return Sequence(seq_id, list(prompt), 8, prefix_group=group)


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_a_prefix_groups_siblings_join_after_the_first_prefill(prefix_caching):
    scheduler = Scheduler(BlockManager(range(1, 65), BS, prefix_caching), max_num_seqs=8,
                          max_num_batched_tokens=100)
    prompt = range(100, 110)  # 10 tokens: two full blocks and a partial one
    first, second, third = (_sample_of(i, prompt, "g") for i in range(3))
    other = _seq(9, 5)
    for seq in (first, second, third, other):
        scheduler.add(seq)
    step = scheduler.schedule()
    if not prefix_caching:  # nothing to share: all at once
        assert _ids(step.prefills) == [0, 1, 2, 9]
        return
    assert _ids(step.prefills) == [0]  # the siblings wait, and those behind them keep their turn
    _run(scheduler, step)
    step = scheduler.schedule()
    assert _ids(step.prefills) == [1, 2, 9] and _ids(step.decodes) == [0]
    assert second.num_cached_tokens == third.num_cached_tokens == 8  # the full blocks; the partial one recomputed
    assert second.block_table[:2] == first.block_table[:2]


def test_a_sibling_does_not_wait_for_a_finished_first_sample():
    scheduler = Scheduler(BlockManager(range(1, 65), BS), max_num_seqs=8, max_num_batched_tokens=100)
    first, second = _sample_of(0, range(100, 110), "g"), _sample_of(1, range(100, 110), "g")
    scheduler.add(first)
    step = scheduler.schedule()
    _run(scheduler, step)
    scheduler.finish(first)
    scheduler.add(second)
    assert _ids(scheduler.schedule().prefills) == [1] and second.num_cached_tokens == 8
