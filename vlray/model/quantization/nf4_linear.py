"""4-bit NF4 weights on CUDA with bitsandbytes, the one 4-bit kernel library that runs on Pascal (its CUDA 12.6
wheels carry sm_60 code, which sm_61 runs). LLM.int8 needs compute capability 7.5, so int8 on CUDA is offered
only from there. Pascal computes fp16 at 1/64 of its fp32 rate: on sm6x the layers compute in fp32 and store
4-bit weights. bitsandbytes is the optional `cuda` extra: `pip install -e '.[cuda]'`.
"""

from __future__ import annotations

import torch
from torch import nn

LLM_INT8_MIN_CAPABILITY = (7, 5)


def import_bitsandbytes():
    """bitsandbytes, or an error that says how to install it."""
    try:
        import bitsandbytes
    except ImportError as exc:
        raise RuntimeError("quantization on CUDA needs bitsandbytes: pip install 'vlray[cuda]' "
                           "(or pip install 'bitsandbytes>=0.45,<0.51')") from exc
    return bitsandbytes


def compute_dtype_for(capability: tuple[int, int] | None) -> torch.dtype:
    """fp32 on Pascal (fp16 math runs at 1/64 rate there), fp16 from Volta on, bf16 from Ampere on."""
    if capability is None or capability < (7, 0):
        return torch.float32
    return torch.bfloat16 if capability >= (8, 0) else torch.float16


def nf4_from_linear(linear: nn.Linear, device: torch.device | str, compute_dtype: torch.dtype) -> nn.Module:
    """A bitsandbytes Linear4bit (NF4, blocks of 64) holding this layer's weight, quantised as it moves to device."""
    bnb = import_bitsandbytes()
    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=compute_dtype, quant_type="nf4", device="meta")
    weight = linear.weight.detach().to("cpu", torch.float16)
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().to("cpu", torch.float32), requires_grad=False)
    return layer.to(device)  # Params4bit quantises on the move


def int8_from_linear(linear: nn.Linear, device: torch.device | str, capability: tuple[int, int]) -> nn.Module:
    """A bitsandbytes Linear8bitLt (LLM.int8, inference only), for GPUs of compute capability 7.5 and newer."""
    if capability < LLM_INT8_MIN_CAPABILITY:
        raise ValueError(f"int8 on CUDA (LLM.int8) needs compute capability 7.5 or newer; this GPU is "
                         f"{capability[0]}.{capability[1]}. Use quantization='int4' (NF4), which runs on Pascal.")
    bnb = import_bitsandbytes()
    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=6.0, device="meta")
    layer.weight = bnb.nn.Int8Params(linear.weight.detach().to("cpu", torch.float16), requires_grad=False,
                                     has_fp16_weights=False)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().to("cpu", torch.float16), requires_grad=False)
    return layer.to(device)


def module_nbytes(module: nn.Module) -> int:
    """Bytes a bitsandbytes layer holds (its packed weight, absmax and bias)."""
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    state = getattr(module.weight, "quant_state", None)
    if state is not None and getattr(state, "absmax", None) is not None:
        total += state.absmax.numel() * state.absmax.element_size()
    return total
