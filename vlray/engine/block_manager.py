"""KV-cache blocks: allocation, reference counts, and prefix caching. Plain Python on ints and lists.

A full block's key chains the previous block's key, its token ids and the hashes of the images whose tokens
it holds, so equal keys mean equal K/V (attention is causal: a token's K/V depends only on what precedes it).
Blocks whose K/V is computed are registered under their key; a later sequence with the same prefix takes them
instead of computing them again. Freed blocks keep their key and go to the back of the free list: a hit brings
one back, and allocation takes from the front, so the least recently freed are reused first (LRU).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from vlray.engine.sequence import Sequence


def block_key(previous: bytes | None, token_ids: Iterable[int], image_hashes: Iterable[str]) -> bytes:
    """The prefix-cache key of a full block."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(previous or b"")
    digest.update(array("q", token_ids).tobytes())
    for image_hash in image_hashes:
        digest.update(image_hash.encode())
    return digest.digest()


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    key: bytes | None = None  # set once the block is full and its K/V computed
    token_ids: tuple[int, ...] = ()


class BlockManager:
    """Owns the block ids of the KV cache and which sequence holds which."""

    def __init__(self, block_ids: Iterable[int], block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = {i: Block(i) for i in block_ids}
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in self.blocks)  # front = reuse first
        self.cached: dict[bytes, int] = {}  # key -> block id

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- admission --------------------------------------------------------------------------------------------

    def prefix_hits(self, seq: Sequence) -> list[int]:
        """Block ids that already hold seq's first blocks (prefix-cache hits), as many as seq may reuse: whole
        blocks that leave a token to compute and do not end inside an image (Sequence.cacheable_prefix_limit)."""
        if not self.enable_prefix_caching:
            return []
        hits, key = [], None
        tokens = seq.token_ids
        for index in range(seq.cacheable_prefix_limit(self.block_size) // self.block_size):
            chunk = tuple(tokens[index * self.block_size:(index + 1) * self.block_size])
            key = block_key(key, chunk, seq.images_in_block(index, self.block_size))
            block_id = self.cached.get(key)
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            hits.append(block_id)
        # The match may stop inside an image (same image, other text after it): back off to a whole image.
        usable = seq.cacheable_prefix_limit(self.block_size, at_most=len(hits) * self.block_size)
        return hits[: usable // self.block_size]

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether seq's tokens fit now: hits on free blocks and new blocks both take from the free list."""
        hits = self.prefix_hits(seq)
        from_free = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return from_free + self.blocks_needed(len(seq)) - len(hits) <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give seq blocks for all its tokens, reusing the cached blocks of its prefix."""
        if seq.block_table:
            raise RuntimeError(f"sequence {seq.seq_id} already holds blocks")
        if not self.can_allocate(seq):
            raise RuntimeError(f"not enough free blocks for sequence {seq.seq_id}")
        hits = self.prefix_hits(seq)
        for block_id in hits:
            self._take(block_id)
        fresh = [self._take_fresh() for _ in range(self.blocks_needed(len(seq)) - len(hits))]
        seq.block_table = hits + fresh
        seq.num_keyed_blocks = len(hits)
        seq.num_cached_tokens = len(hits) * self.block_size
        seq.num_computed_tokens = seq.num_cached_tokens

    # -- decoding ---------------------------------------------------------------------------------------------

    def can_append(self, seq: Sequence) -> bool:
        """Whether seq's next decode step has a slot for its last token's K/V."""
        return len(seq.block_table) >= self.blocks_needed(len(seq)) or self.num_free_blocks >= 1

    def append_slot(self, seq: Sequence) -> None:
        """Add a block when seq's last token starts a new one."""
        if len(seq.block_table) < self.blocks_needed(len(seq)):
            seq.block_table.append(self._take_fresh())

    def commit_computed(self, seq: Sequence) -> None:
        """Register seq's full, computed blocks under their keys so later sequences can share them (only the
        blocks filled since the last call: this runs for every sequence at every step)."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        if full <= seq.num_keyed_blocks:
            return
        tokens = seq.token_ids
        key = self.blocks[seq.block_table[seq.num_keyed_blocks - 1]].key if seq.num_keyed_blocks else None
        for index in range(seq.num_keyed_blocks, full):
            block = self.blocks[seq.block_table[index]]
            if block.key is None:
                chunk = tuple(tokens[index * self.block_size:(index + 1) * self.block_size])
                block.key, block.token_ids = block_key(key, chunk, seq.images_in_block(index, self.block_size)), chunk
                self.cached[block.key] = block.block_id  # a newer copy of the same content takes over the key
            key = block.key
        seq.num_keyed_blocks = full

    def deallocate(self, seq: Sequence) -> None:
        """Release seq's blocks (last first, so a prefix outlives its tails in the LRU order)."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_keyed_blocks = 0

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (the blocks in use keep their contents); for cold-cache measurements."""
        for block in self.blocks.values():
            if block.ref_count == 0:
                block.key, block.token_ids = None, ()
        self.cached = {key: b for key, b in self.cached.items() if self.blocks[b].key == key}

    def slot(self, seq: Sequence, position: int) -> int:
        """The cache slot (block id x block size + offset) of a token position of seq."""
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size

    # -- internals --------------------------------------------------------------------------------------------

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def _take_fresh(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.key is not None and self.cached.get(block.key) == block_id:
            del self.cached[block.key]  # evicted: its content is gone
        block.key, block.token_ids, block.ref_count = None, (), 1
        return block_id
