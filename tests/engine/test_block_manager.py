"""KV blocks: allocation, exact reuse order, reference counts and prefix caching (tokens and image hashes)."""

import pytest

from vlray.engine.block_manager import BlockManager
from vlray.engine.sequence import ImageSpan, Sequence

BS = 4


def _seq(seq_id, tokens, spans=(), max_tokens=8):
    return Sequence(seq_id, list(tokens), max_tokens, image_spans=list(spans))


def _admit(manager, seq):
    manager.allocate(seq)
    return seq


def _finish_prefill(manager, seq):
    seq.num_computed_tokens = len(seq)
    manager.commit_computed(seq)


def test_allocation_takes_blocks_in_order_and_frees_in_lru_order():
    manager = BlockManager(range(1, 9), BS)
    a = _admit(manager, _seq(0, range(10)))  # 10 tokens: 3 blocks
    b = _admit(manager, _seq(1, range(100, 105)))  # 5 tokens: 2 blocks
    assert a.block_table == [1, 2, 3] and b.block_table == [4, 5]
    assert manager.num_free_blocks == 3
    manager.deallocate(a)  # freed last block first: 3, 2, 1 go to the back of the free list
    assert list(manager.free) == [6, 7, 8, 3, 2, 1]
    c = _admit(manager, _seq(2, range(200, 213)))  # 13 tokens: 4 blocks, taken from the front
    assert c.block_table == [6, 7, 8, 3]


def test_prefix_hit_shares_blocks_and_counts_references():
    manager = BlockManager(range(1, 9), BS)
    first = _admit(manager, _seq(0, [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    _finish_prefill(manager, first)
    second = _admit(manager, _seq(1, [1, 2, 3, 4, 5, 6, 7, 8, 42, 43]))
    # Two full blocks in common (8 tokens); the rest is fresh.
    assert second.block_table[:2] == first.block_table[:2]
    assert second.num_cached_tokens == 8 and second.num_computed_tokens == 8
    assert manager.blocks[first.block_table[0]].ref_count == 2
    manager.deallocate(first)
    assert manager.blocks[second.block_table[0]].ref_count == 1
    assert first.block_table == []


def test_at_least_one_token_is_computed_even_when_all_blocks_are_cached():
    manager = BlockManager(range(1, 9), BS)
    first = _admit(manager, _seq(0, range(8)))
    _finish_prefill(manager, first)
    again = _admit(manager, _seq(1, range(8)))
    assert again.num_cached_tokens == 4  # the last block is recomputed: its last token's logits are needed
    assert again.block_table[0] == first.block_table[0] and again.block_table[1] != first.block_table[1]


def test_freed_blocks_stay_cached_until_evicted():
    manager = BlockManager(range(1, 5), BS)
    first = _admit(manager, _seq(0, range(9)))  # blocks 1, 2, 3
    _finish_prefill(manager, first)
    manager.deallocate(first)
    revived = _admit(manager, _seq(1, range(9)))
    assert revived.block_table[:2] == [1, 2] and revived.num_cached_tokens == 8
    manager.deallocate(revived)
    # Fill the whole cache with other content: the cached blocks are evicted and a repeat misses.
    filler = _admit(manager, _seq(2, range(500, 516)))
    manager.deallocate(filler)
    assert _admit(manager, _seq(3, range(9))).num_cached_tokens == 0


def test_images_are_part_of_the_key():
    manager = BlockManager(range(1, 20), BS)
    pad = 9
    tokens = [1, 2] + [pad] * 6 + [3, 4, 5]  # image tokens at 2..8
    cat = _admit(manager, _seq(0, tokens, [ImageSpan(2, 8, "cat")]))
    _finish_prefill(manager, cat)
    dog = _admit(manager, _seq(1, tokens, [ImageSpan(2, 8, "dog")]))
    assert dog.num_cached_tokens == 0  # same token ids, another image: nothing shared
    same_cat = _admit(manager, _seq(2, tokens, [ImageSpan(2, 8, "cat")]))
    assert same_cat.num_cached_tokens == 8


def test_a_match_that_stops_inside_an_image_backs_off_to_before_it():
    manager = BlockManager(range(1, 20), BS)
    pad = 9
    # The same image (tokens 2..9) followed by different text: blocks 0 and 1 match, block 2 (8..11) differs.
    # Two hit blocks would end at 8, inside the image: the whole image is recomputed instead.
    first = _admit(manager, _seq(0, [1, 2] + [pad] * 8 + [3, 4, 5], [ImageSpan(2, 10, "cat")]))
    _finish_prefill(manager, first)
    other = _admit(manager, _seq(1, [1, 2] + [pad] * 8 + [6, 7, 8], [ImageSpan(2, 10, "cat")]))
    assert other.num_cached_tokens == 0


def test_cached_prefix_never_cuts_through_an_image():
    seq = _seq(0, range(20), [ImageSpan(6, 14, "img")])
    # Whole blocks below 19 would be 16; 16 is past the image, fine. 12 would cut the image (6 < 12 < 14).
    assert seq.cacheable_prefix_limit(BS) == 16
    seq = _seq(0, range(14), [ImageSpan(6, 13, "img")])
    assert seq.cacheable_prefix_limit(BS) == 4  # 12 cuts the image; back to the block before it starts


def test_append_slot_adds_a_block_when_the_last_token_starts_one():
    manager = BlockManager(range(1, 4), BS)
    seq = _admit(manager, _seq(0, range(4)))
    _finish_prefill(manager, seq)
    seq.append_token(99)  # 5 tokens: token 4 needs block 2
    assert manager.can_append(seq)
    manager.append_slot(seq)
    assert seq.block_table == [1, 2]
    assert manager.slot(seq, 4) == 2 * BS + 0
    seq.append_token(100)
    manager.append_slot(seq)
    assert seq.block_table == [1, 2]  # still room in block 2


def test_allocate_refuses_when_full():
    manager = BlockManager(range(1, 3), BS)
    _admit(manager, _seq(0, range(8)))
    seq = _seq(1, range(50, 53))
    assert not manager.can_allocate(seq)
    with pytest.raises(RuntimeError, match="not enough free blocks"):
        manager.allocate(seq)
