"""The decode fast path: one new token for each of B sequences at different positions, on the model's own
weights, against the paged KV cache, with SDPA attention (its math or memory-efficient kernels run on Pascal).

Per layer it does what Qwen3VLTextDecoderLayer does (RMSNorm, q/k/v projections, per-head q/k norms, rotary
embedding, attention, o_proj, MLP) with the model's own modules, minus transformers' per-step bookkeeping:
no cache objects, no mask builders, no generation loop. Decode tokens are text, so their 3-D rotary position
is one number (n + rope_delta) on all three axes, and DeepStack (which adds visual features at image
positions) has nothing to do.

fp16 (Pascal has no bf16): Qwen's residual stream grows past fp16's 65504 in places, so with fp16 weights the
residual is kept in fp32 (the norms already compute in fp32, and their output, which is small, goes back to
fp16 for the projections).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

from vlray.engine.kv_cache import KVCache
from vlray.model.placement import DeviceMoves, ModelPlacement, Side


class DecodeRunner:
    """`forward(...)` -> next-token logits [B, V] (float32) for a batch of sequences."""

    def __init__(self, model: PreTrainedModel, kv_cache: KVCache, placement: ModelPlacement | None = None,
                 moves: DeviceMoves | None = None) -> None:
        """`placement`: a split model's sides (the step crosses them as prefill does); None: one device."""
        self.moves = moves or DeviceMoves()
        text = model.model.language_model
        self.layers = text.layers
        self.embed_tokens = text.embed_tokens
        self.norm = text.norm
        self.rotary_emb = text.rotary_emb
        self.lm_head = model.lm_head
        self.kv_cache = kv_cache
        self.dtype = self.norm.weight.dtype  # (the head may be quantised: it has no float weight then)
        self.residual_dtype = torch.float32 if self.dtype == torch.float16 else self.dtype
        self.placement = placement or ModelPlacement.single(self.norm.weight.device, self.dtype)
        config = model.config.text_config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                block_tables: torch.Tensor, context_lens: torch.Tensor, split_at: int = 0) -> torch.Tensor:
        """input_ids, positions, slots, context_lens: [B]; block_tables: [B, nb]. Writes the tokens' K/V.

        split_at (rows sorted by context length, see best_split): attention runs for rows [:split_at] and
        [split_at:] apart, each padded to its own longest context rather than all to the batch's longest.
        """
        if self.placement.is_split or self.residual_dtype != self.dtype:
            return self._forward_by_side(input_ids, positions, slots, block_tables, context_lens, split_at)
        # The common case (one device, no fp16 residual): no casts, each of which costs Python time per step.
        rows = input_ids.shape[0]
        hidden = self.embed_tokens(input_ids).to(self.dtype)  # [B, D]
        # Same cos/sin as the model computes: its rotary module, on 3-D positions that are equal for text.
        cos, sin = self.rotary_emb(hidden, positions.view(1, rows, 1).expand(3, rows, 1))  # [B, 1, d]
        bounds = [(0, split_at), (split_at, rows)] if 0 < split_at < rows else [(0, rows)]
        groups = [self._attention_group(block_tables[lo:hi], context_lens[lo:hi]) for lo, hi in bounds]
        for index, layer in enumerate(self.layers):
            hidden = hidden + self._attention(index, layer.self_attn, layer.input_layernorm(hidden), cos, sin,
                                              slots, groups)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.lm_head(self.norm(hidden)).float()

    def _forward_by_side(self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                         block_tables: torch.Tensor, context_lens: torch.Tensor, split_at: int) -> torch.Tensor:
        """forward() layer by layer on each layer's side, in its dtype, the hidden state carried in the side's
        carry dtype (fp32 under fp16 weights) and across the layer boundaries of a split under the names
        prefill's hooks use. The embeddings, the final norm and the head are called as modules, so
        place_model's hooks move their inputs (and the logits back to main) here too."""
        placement, moves = self.placement, self.moves
        rows = input_ids.shape[0]
        side = placement.embeddings
        hidden = self.embed_tokens(input_ids).to(side.carry_dtype)  # [B, D]
        cos, sin = self.rotary_emb(hidden.to(side.dtype), positions.view(1, rows, 1).expand(3, rows, 1))
        bounds = [(0, split_at), (split_at, rows)] if 0 < split_at < rows else [(0, rows)]
        step: dict[str, tuple] = {}  # per side: cos, sin, slots, attention groups (the step's inputs there)

        def inputs_on(layer_side: Side) -> tuple:
            if layer_side.name not in step:
                where = (cos, sin), slots, block_tables, context_lens
                if layer_side is not side:  # (cos, sin) computed beside the embeddings
                    where = moves.to(where, layer_side, f"step inputs to {layer_side.name}", layer_side.dtype)
                (side_cos, side_sin), side_slots, tables, lens = where
                step[layer_side.name] = (side_cos, side_sin, side_slots,
                                         [self._attention_group(tables[lo:hi], lens[lo:hi]) for lo, hi in bounds])
            return step[layer_side.name]

        current = side
        for index, layer in enumerate(self.layers):
            layer_side = placement.layer_side(index)
            if layer_side is not current:
                hidden = moves.to(hidden, layer_side, f"{current.name}->{layer_side.name} at decoder layer {index}")
                current = layer_side
            layer_cos, layer_sin, layer_slots, groups = inputs_on(layer_side)
            dtype, carry = layer_side.dtype, layer_side.carry_dtype
            hidden = hidden + self._attention(index, layer.self_attn, layer.input_layernorm(hidden).to(dtype),
                                              layer_cos, layer_sin, layer_slots, groups).to(carry)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden).to(dtype)).to(carry)
        return self.lm_head(self.norm(hidden).to(placement.head.dtype)).float()

    def _attention_group(self, block_tables: torch.Tensor, context_lens: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """A group's block tables, cut to its own longest context, and its mask [rows, 1, 1, context]."""
        if block_tables.device.type == "cpu":  # (on CUDA the full width is kept: no host sync per step)
            block_tables = block_tables[:, : -(-int(context_lens.max()) // self.kv_cache.block_size)]
        context = block_tables.shape[1] * self.kv_cache.block_size
        mask = torch.arange(context, device=context_lens.device)[None, :] < context_lens[:, None]
        return block_tables, mask[:, None, None, :]

    def _attention(self, index: int, attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   slots: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        rows = x.shape[0]
        q = attention.q_norm(attention.q_proj(x).view(rows, self.num_heads, self.head_dim))
        k = attention.k_norm(attention.k_proj(x).view(rows, self.num_kv_heads, self.head_dim))
        v = attention.v_proj(x).view(rows, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary_pos_emb(q.unsqueeze(2), k.unsqueeze(2), cos, sin)  # [B, heads, 1, d]
        self.kv_cache.write(index, slots, k.squeeze(2), v)
        outs, start = [], 0
        for block_tables, mask in groups:
            stop = start + block_tables.shape[0]
            keys, values = self.kv_cache.gather(index, block_tables)  # [rows, kv heads, context, d]
            outs.append(F.scaled_dot_product_attention(
                q[start:stop], keys, values, attn_mask=mask, scale=attention.scaling,
                enable_gqa=self.num_heads != self.num_kv_heads))  # [rows, heads, 1, d]
            start = stop
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return attention.o_proj(out.reshape(rows, self.num_heads * self.head_dim))


def best_split(context_blocks: list[int], min_saving: float = 0.25) -> int:
    """Where to cut rows sorted by context length (in blocks) into two attention groups: the cut that pads
    least, if it saves at least min_saving of the padded area of one group; 0 means one group."""
    rows = len(context_blocks)
    whole = rows * context_blocks[-1] if rows else 0
    best, where = whole, 0
    for cut in range(1, rows):
        area = cut * context_blocks[cut - 1] + (rows - cut) * context_blocks[-1]
        if area < best:
            best, where = area, cut
    return where if whole and best <= (1 - min_saving) * whole else 0
