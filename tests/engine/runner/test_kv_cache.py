"""KVCache: K/V written at slots come back, exactly, from a gather by block table, in block-table order; the
scratch block is never handed out; the budget sizes the cache."""

import pytest
import torch

from vlray.engine.kv_cache import SCRATCH_BLOCK, KVCache, KVCacheShape

SHAPE = KVCacheShape(num_layers=2, num_kv_heads=3, head_dim=4, block_size=4)


def _cache(num_blocks: int = 8) -> KVCache:
    return KVCache(SHAPE, num_blocks, torch.float32, "cpu")


def test_gather_returns_what_write_stored_in_block_table_order():
    cache = _cache()
    generator = torch.Generator().manual_seed(0)
    # Sequence A holds blocks 5 then 2 (out of order on purpose), 7 tokens; sequence B block 3, 2 tokens.
    tables = {"a": [5, 2], "b": [3, SCRATCH_BLOCK]}
    lengths = {"a": 7, "b": 2}
    written = {}
    for name, table in tables.items():
        positions = torch.arange(lengths[name])
        slots = torch.tensor(table)[positions // 4] * 4 + positions % 4
        for layer in range(SHAPE.num_layers):
            k = torch.randn(lengths[name], 3, 4, generator=generator)
            v = torch.randn(lengths[name], 3, 4, generator=generator)
            cache.write(layer, slots, k, v)
            written[name, layer] = (k, v)
    block_tables = torch.tensor([tables["a"], tables["b"]])
    for layer in range(SHAPE.num_layers):
        keys, values = cache.gather(layer, block_tables)
        assert keys.shape == values.shape == (2, 3, 8, 4)  # [B, heads, blocks x block_size, dim]
        for row, name in enumerate(tables):
            k, v = written[name, layer]
            torch.testing.assert_close(keys[row, :, : lengths[name]], k.transpose(0, 1), rtol=0, atol=0)
            torch.testing.assert_close(values[row, :, : lengths[name]], v.transpose(0, 1), rtol=0, atol=0)
    # Other layers' and other blocks' contents were left alone.
    assert all(k[1].abs().sum() == 0 for k in cache.k_layers) and all(v[4].abs().sum() == 0 for v in cache.v_layers)


def test_write_casts_to_the_cache_dtype():
    cache = KVCache(SHAPE, 4, torch.float16, "cpu")
    k = torch.full((1, 3, 4), 1.5, dtype=torch.float32)
    cache.write(0, torch.tensor([5]), k, -k)
    keys, values = cache.gather(0, torch.tensor([[1]]))
    assert keys.dtype == torch.float16 and keys[0, :, 1].eq(1.5).all() and values[0, :, 1].eq(-1.5).all()


def test_scratch_block_is_not_usable_and_sizes_follow_the_budget():
    cache = _cache(6)
    assert SCRATCH_BLOCK not in cache.usable_block_ids and len(cache.usable_block_ids) == 5
    per_token = SHAPE.bytes_per_token(torch.float32)
    assert per_token == 2 * 2 * 3 * 4 * 4
    assert SHAPE.blocks_for_budget(10 * 4 * per_token + 1, torch.float32) == 10
    assert cache.num_bytes == 6 * 4 * per_token
    with pytest.raises(ValueError, match="too small"):
        _cache(1)
