"""fp16 without overflow: carry Qwen3-VL's residual stream in fp32 when the weights are fp16 (Pascal).

Qwen models were trained in bf16, whose range is fp32's; in fp16 (max 65504) the residual stream of some
layers overflows to inf and the output turns to NaN (huggingface/transformers#33294). The fix that costs
nothing on Pascal: keep the running sum between layers in fp32 and everything else (weights, matmuls, KV
cache) in fp16. RMSNorm already computes in fp32 and its output is small, so it goes back to fp16 for the
projections; each sublayer's output is added to the fp32 residual.

Applied by replacing the `forward` of the text decoder's layers and final norm on the loaded model (the
modules and weights stay transformers' own), so transformers' forward (prefill) and the engine's decode path
both run with it.
"""

from __future__ import annotations

from types import MethodType

import torch
from transformers import PreTrainedModel


def keep_residual_in_fp32(model: PreTrainedModel) -> None:
    """Make the text decoder's residual stream fp32 (a no-op unless the text weights are fp16)."""
    text = model.model.language_model
    # Layer by layer (norm weights: the embeddings and head may be quantised): a split model has fp16 layers on
    # the GPU and fp32 ones on the CPU.
    for layer in text.layers:
        if layer.input_layernorm.weight.dtype == torch.float16:
            layer.forward = MethodType(_decoder_layer_forward, layer)
    if text.norm.weight.dtype == torch.float16:
        text.norm.forward = MethodType(_final_norm_forward, text.norm)


def _decoder_layer_forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                           attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                           cache=None, use_cache: bool | None = False, **kwargs) -> torch.Tensor:
    """Qwen3VLTextDecoderLayer.forward, with the residual in fp32 and the sublayers in the weights' dtype."""
    dtype = self.input_layernorm.weight.dtype
    residual = hidden_states.float()
    attention, _ = self.self_attn(
        hidden_states=self.input_layernorm(residual).to(dtype), attention_mask=attention_mask,
        position_ids=position_ids, cache=cache, use_cache=use_cache, position_embeddings=position_embeddings,
        **kwargs)
    residual = residual + attention.float()
    return residual + self.mlp(self.post_attention_layernorm(residual).to(dtype)).float()


def _final_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """The last RMSNorm takes the fp32 residual and hands lm_head the weights' dtype."""
    variance = hidden_states.float().pow(2).mean(-1, keepdim=True)
    normed = hidden_states.float() * torch.rsqrt(variance + self.variance_epsilon)
    return (self.weight * normed.to(self.weight.dtype)).to(self.weight.dtype)
