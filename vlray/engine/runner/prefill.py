"""Prefill through transformers' own Qwen3-VL forward, writing the K/V it computes into the paged cache.

Running the model's forward keeps everything multimodal exact: the vision encoder, DeepStack's injection of
visual features into the first decoder layers, and the 3-D rotary positions of image tokens. A cached prefix
(from the block manager) is handed to the forward as a DynamicCache, so only the rest of the prompt is
computed; then the new K/V are copied from that DynamicCache into the sequence's blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from vlray.engine.kv_cache import KVCache
from vlray.engine.sequence import Sequence
from vlray.inputs.prepared_request import PreparedRequest
from vlray.model.vision_encoder import ImageFeatures, to_mm_encoder_outputs


def images_to_encode(seq: Sequence) -> list[int]:
    """Indices of seq's images after its cached prefix (those inside it are in the cached K/V already)."""
    return [i for i, span in enumerate(seq.image_spans) if span.start >= seq.num_cached_tokens]


def image_patches(prepared: PreparedRequest, pixel_values: torch.Tensor, images: list[int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The patches and grids of the chosen images (patches are stored image after image)."""
    grid = torch.from_numpy(prepared.image_grid_thw)
    starts = np.cumsum([0] + grid.prod(-1).tolist())
    patches = torch.cat([pixel_values[starts[i]:starts[i + 1]] for i in images])
    return patches, grid[images]


@dataclass(slots=True)
class PrefillResult:
    logits: torch.Tensor  # [V] float32, for the sequence's next token
    rope_delta: int  # decode position of token n is n + rope_delta (images compress the 3-D positions)


class PrefillRunner:
    """One sequence at a time (batch 1, no padding): the same numbers plain `generate` computes."""

    def __init__(self, model: PreTrainedModel, kv_cache: KVCache, device: str | torch.device) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.device = torch.device(device)
        self.text_config = model.config.text_config

    def run(self, seq: Sequence, prepared: PreparedRequest, image_features: list[ImageFeatures] | None
            ) -> PrefillResult:
        """Compute seq's tokens from num_cached_tokens on; `image_features` are the vision-encoder outputs of
        the images after the cached prefix (images_to_encode), in order."""
        cached, total = seq.num_cached_tokens, len(seq)
        token_ids = torch.tensor(seq.token_ids, dtype=torch.long).unsqueeze(0)  # [1, T]
        mm_types = None
        if prepared.mm_token_type_ids is not None:
            # Generated tokens (a preempted sequence is recomputed with them) are text.
            padded = np.zeros(total, dtype=np.int32)
            padded[: prepared.num_prompt_tokens] = prepared.mm_token_type_ids
            mm_types = torch.from_numpy(padded).unsqueeze(0)
        positions, rope_delta = self._positions(token_ids, mm_types, prepared)  # [3, 1, T]

        inputs = {
            "input_ids": token_ids[:, cached:].to(self.device),
            "position_ids": positions[:, :, cached:].to(self.device),
            "cache": self._cache_with_prefix(seq),
            "use_cache": True,
            "logits_to_keep": 1,
        }
        if mm_types is not None:
            inputs["mm_token_type_ids"] = mm_types[:, cached:].to(self.device)
            if image_features:
                inputs["mm_encoder_outputs"] = to_mm_encoder_outputs(image_features)
        output = self.model(**inputs)
        self._store(seq, output.cache, cached, total)
        return PrefillResult(output.logits[0, -1].float(), rope_delta)

    def _positions(self, token_ids: torch.Tensor, mm_types: torch.Tensor | None,
                   prepared: PreparedRequest) -> tuple[torch.Tensor, int]:
        if mm_types is None:
            positions = torch.arange(token_ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
            return positions, 0
        grid = torch.from_numpy(prepared.image_grid_thw)
        positions, deltas = self.model.model.get_rope_index(token_ids, mm_types, image_grid_thw=grid)
        return positions, int(deltas.view(-1)[0])

    def _cache_with_prefix(self, seq: Sequence) -> DynamicCache:
        cache = DynamicCache(config=self.text_config)
        if seq.num_cached_tokens:
            blocks = torch.tensor([seq.block_table[: seq.num_cached_tokens // self.kv_cache.block_size]])
            for layer, table in enumerate(self.kv_cache.per_layer(blocks)):  # (a split keeps K/V beside each layer)
                k, v = self.kv_cache.gather(layer, table)  # [1, heads, cached, dim]
                cache.update(k.contiguous(), v.contiguous(), layer)
        return cache

    def _store(self, seq: Sequence, cache: DynamicCache, cached: int, total: int) -> None:
        block_size = self.kv_cache.block_size
        positions = torch.arange(cached, total)
        table = torch.tensor(seq.block_table, dtype=torch.long)
        slots = table[positions // block_size] * block_size + positions % block_size
        for layer, layer_slots in enumerate(self.kv_cache.per_layer(slots)):
            keys = cache.layers[layer].keys[0, :, cached:].transpose(0, 1)  # [T, heads, dim]
            values = cache.layers[layer].values[0, :, cached:].transpose(0, 1)
            self.kv_cache.write(layer, layer_slots, keys, values)
