"""The decode fast path against the model's own forward, on a one-layer copy of the tiny model: the K/V a
prefill leaves in the paged cache, then one DecodeRunner step, give the logits transformers computes for the
same token over the whole sequence, for rows of different lengths in one batch, grouped or not."""

import copy

import pytest
import torch
from transformers import DynamicCache

from vlray.engine.kv_cache import KVCache, KVCacheShape
from vlray.engine.runner.decode import DecodeRunner, best_split

BLOCK = 4


@pytest.fixture(scope="module")
def one_layer(tiny_loaded):
    """The tiny model cut to its first decoder layer (the layer's own weights, the model's own norm and head)."""
    model = copy.deepcopy(tiny_loaded.model)
    model.model.language_model.layers = model.model.language_model.layers[:1]
    model.config.text_config.num_hidden_layers = 1
    return model.eval()


def _prefill_into(cache: KVCache, model, token_ids: list[int], table: list[int]) -> None:
    """The model's forward over the prompt; its K/V copied into the sequence's blocks."""
    kv = DynamicCache(config=model.config.text_config)
    positions = torch.arange(len(token_ids)).view(1, 1, -1).expand(3, 1, -1)
    model(input_ids=torch.tensor([token_ids]), position_ids=positions, cache=kv, use_cache=True)
    slots = torch.tensor(table)[torch.arange(len(token_ids)) // BLOCK] * BLOCK + torch.arange(len(token_ids)) % BLOCK
    cache.write(0, slots, kv.layers[0].keys[0].transpose(0, 1), kv.layers[0].values[0].transpose(0, 1))


@pytest.mark.parametrize("split", [False, True])
def test_one_decode_step_equals_the_models_forward(one_layer, split):
    text = one_layer.config.text_config
    cache = KVCache(KVCacheShape(1, text.num_key_value_heads, text.head_dim, BLOCK), 32, torch.float32, "cpu")
    generator = torch.Generator().manual_seed(0)
    # Rows sorted by length, as the engine sorts them for grouped attention.
    prompts = [torch.randint(0, 400, (n,), generator=generator).tolist() for n in (3, 6, 17)]
    next_tokens = [11, 22, 33]
    tables = [[1, 2], [3, 4, 5], [6, 7, 8, 9, 10]]
    for prompt, table in zip(prompts, tables):
        _prefill_into(cache, one_layer, prompt, table)

    width = max(len(t) for t in tables)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    lengths = torch.tensor([len(p) + 1 for p in prompts])
    positions = lengths - 1
    slots = torch.tensor([t[p // BLOCK] * BLOCK + p % BLOCK for t, p in zip(tables, positions.tolist())])
    split_at = best_split([-(-int(n) // BLOCK) for n in lengths], min_saving=0.0) if split else 0
    assert (split_at > 0) == split
    with torch.inference_mode():
        logits = DecodeRunner(one_layer, cache).forward(torch.tensor(next_tokens), positions, slots, block_tables,
                                                        lengths, split_at=split_at)
        for row, (prompt, token) in enumerate(zip(prompts, next_tokens)):
            whole = one_layer(input_ids=torch.tensor([prompt + [token]])).logits[0, -1].float()
            torch.testing.assert_close(logits[row], whole, atol=1e-4, rtol=1e-4)
