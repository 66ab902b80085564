"""What each part of a Qwen3-VL model weighs, counted on the meta device (no weights loaded), and what it weighs
in each storage form: the numbers the device plan places."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Qwen3VLConfig

# Bytes per weight of a quantised linear layer, its scales included: int8 per output channel (fp32 scale per
# row of K >= 1024: under 0.4 %), the CPU int4 kernel (bf16 scale and zero per 128: 4 bytes / 128), bitsandbytes
# NF4 (fp32 absmax per block of 64, counted without its nested 8-bit compression, so a little high).
BYTES_PER_WEIGHT: dict[str, float] = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.004, "int4": 0.5 + 4 / 128,
                                      "nf4": 0.5 + 4 / 64}


@dataclass(frozen=True, slots=True)
class ComponentSizes:
    """Parameter counts of the parts the plan places, and the shapes its activation estimates need."""

    vision_params: int
    embedding_params: int
    layer_linear_params: int
    """Weights of the linear layers of one decoder layer (what quantisation shrinks)."""
    layer_other_params: int
    """Norm weights of one decoder layer (they stay in the compute dtype)."""
    num_layers: int
    head_params: int
    final_norm_params: int
    tied_head: bool
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_heads: int
    vision_patch_size: int
    vision_merge_size: int

    def kv_bytes_per_token(self, bytes_per_value: int) -> int:
        """K and V of every layer: 28 x 2 x 8 x 128 x 2 = 112 KiB per token for the 2B model in 16 bits."""
        return self.num_layers * self.kv_bytes_per_token_per_layer(bytes_per_value)

    def kv_bytes_per_token_per_layer(self, bytes_per_value: int) -> int:
        return 2 * self.num_kv_heads * self.head_dim * bytes_per_value

    def layer_bytes(self, form: str, compute_bytes: int) -> int:
        """One decoder layer: its linears in `form`, its norms in the compute dtype."""
        return int(self.layer_linear_params * BYTES_PER_WEIGHT[form]) + self.layer_other_params * compute_bytes

    def head_bytes(self, form: str) -> int:
        return int(self.head_params * BYTES_PER_WEIGHT[form])

    def embedding_bytes(self, form: str) -> int:
        return int(self.embedding_params * BYTES_PER_WEIGHT[form])

    def vision_bytes(self, form: str) -> int:
        return int(self.vision_params * BYTES_PER_WEIGHT[form])

    def text_prefill_bytes(self, tokens: int, compute_bytes: int) -> int:
        """Peak activations of one prefill of `tokens` tokens: the residual, q/k/v/o, the MLP's three
        intermediate tensors, fp32 attention scores (the math kernel's; the memory-efficient one needs less), and
        last-token logits."""
        per_token = (4 * self.hidden_size + 2 * self.num_kv_heads * self.head_dim + 3 * self.intermediate_size)
        scores = self.num_heads * tokens * tokens * 4
        return tokens * per_token * compute_bytes + scores + self.vocab_size * 4

    def vision_prefill_bytes(self, max_pixels: int, compute_bytes: int) -> int:
        """Peak activations of the vision tower on one image of max_pixels (patches of patch_size^2 pixels)."""
        patches = max_pixels // (self.vision_patch_size ** 2)
        per_patch = 5 * self.vision_hidden_size + 2 * self.vision_intermediate_size
        scores = self.vision_num_heads * patches * patches * 4
        return patches * per_patch * compute_bytes + scores

    def image_tokens(self, max_pixels: int) -> int:
        """Tokens one image of max_pixels costs after the spatial merge."""
        return max_pixels // (self.vision_patch_size * self.vision_merge_size) ** 2


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def component_sizes(config: Qwen3VLConfig) -> ComponentSizes:
    """Build the model on the meta device and count each part's parameters."""
    from transformers import Qwen3VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    text = model.model.language_model
    layer = text.layers[0]
    linear = sum(m.weight.numel() for m in layer.modules() if isinstance(m, nn.Linear))
    embed, head = text.embed_tokens.weight, model.lm_head.weight
    tied = head is embed or bool(getattr(config, "tie_word_embeddings", False))
    tc, vc = config.text_config, config.vision_config
    return ComponentSizes(
        vision_params=_count(model.model.visual), embedding_params=embed.numel(),
        layer_linear_params=linear, layer_other_params=_count(layer) - linear, num_layers=len(text.layers),
        head_params=head.numel(), final_norm_params=_count(text.norm), tied_head=tied,
        hidden_size=tc.hidden_size, intermediate_size=tc.intermediate_size, num_heads=tc.num_attention_heads,
        num_kv_heads=tc.num_key_value_heads, head_dim=tc.head_dim, vocab_size=tc.vocab_size,
        vision_hidden_size=vc.hidden_size, vision_intermediate_size=vc.intermediate_size,
        vision_num_heads=vc.num_heads, vision_patch_size=vc.patch_size, vision_merge_size=vc.spatial_merge_size)
