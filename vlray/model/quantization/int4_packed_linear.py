"""int4 weights (asymmetric, per group of input channels) on the CPU: PyTorch's `_weight_int4pack_mm_for_cpu`.

It is PyTorch's only int4 CPU kernel with a real AVX2 path, and it wants bf16 activations (fp32 ones take a slow
path, 16 ms instead of 1.1 ms for one [6144 x 2048] projection at M=1 on AVX2, 2 threads). Activations are cast
to bf16 for the call and the output back; the rest of the model stays in its own dtype. torchao's int4 CPU
layout ("opaque") is not in torchao 0.18's wheels, and its int8 CPU paths ran 10-30x slower than the aten ops.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP_SIZES = (128, 64, 32)  # the kernel's supported groups, largest first (fewest scales)
CHUNK_ROWS = 8192  # quantised and packed this many output rows at a time (a multiple of every row block)
ROW_MULTIPLE = 16  # output rows are padded to this (a 151936-row head needs none, the tiny model's 765 do)


def pick_group_size(in_features: int) -> int | None:
    """The largest supported group that divides in_features, or None (the layer then stays unquantised)."""
    return next((g for g in GROUP_SIZES if in_features % g == 0), None)


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int32 [N, K] in 0..15, scales_and_zeros fp32 [K/g, N, 2]) in the kernel's convention,
    w = (code - 8) * scale + zero, with min/max per group."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // group_size, group_size)  # [N, K/g, g]
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scales = ((high - low) / 15).clamp(min=1e-8)
    codes = torch.clamp(torch.round((groups - low) / scales), 0, 15).to(torch.int32).reshape(rows, cols)
    zeros = low + 8 * scales
    scales_and_zeros = torch.stack([scales.squeeze(-1), zeros.squeeze(-1)], dim=-1).transpose(0, 1).contiguous()
    return codes, scales_and_zeros


class Int4PackedLinear(nn.Module):
    """A drop-in for nn.Linear on the CPU: int4 weights packed for PyTorch's kernel, bf16 activations inside."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                 in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.register_buffer("packed", packed)  # [N padded to 16, K/2] uint8, the kernel's own layout
        # [K/g, N, 2] bf16, kept as its int16 bits so that model.to(dtype) and .float() leave it as the kernel wants
        self.register_buffer("scales_and_zeros", scales_and_zeros.view(torch.int16))
        self.register_buffer("bias", bias)  # [N] fp32 or None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None) -> Int4PackedLinear:
        """Quantise and pack a linear layer's weight; group_size defaults to the largest that divides K."""
        group_size = group_size or pick_group_size(linear.in_features)
        if group_size is None or linear.in_features % group_size:
            raise ValueError(f"int4 needs in_features divisible by one of {GROUP_SIZES}; got {linear.in_features}")
        weight = linear.weight.detach().to("cpu", torch.float32)
        padded_rows = -(-weight.shape[0] // ROW_MULTIPLE) * ROW_MULTIPLE  # the kernel packs rows by 16
        if padded_rows != weight.shape[0]:
            weight = torch.cat([weight, weight.new_zeros(padded_rows - weight.shape[0], weight.shape[1])])
        # Rows in chunks (multiples of the kernel's row blocks, so the packed chunks stack): the int32 codes and the
        # per-group temporaries of a 151936-row head would otherwise cost several GB at once.
        packed_chunks, scale_chunks = [], []
        for start in range(0, weight.shape[0], CHUNK_ROWS):
            codes, scales_and_zeros = quantize_int4(weight[start : start + CHUNK_ROWS], group_size)
            packed_chunks.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
            scale_chunks.append(scales_and_zeros)
        packed, scales_and_zeros = torch.cat(packed_chunks), torch.cat(scale_chunks, dim=1)
        bias = None if linear.bias is None else linear.bias.detach().to("cpu", torch.float32).clone()
        return cls(packed, scales_and_zeros.to(torch.bfloat16), group_size, linear.in_features,
                   linear.out_features, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size,
                                                         self.scales_and_zeros.view(torch.bfloat16))  # [M, N] bf16
        out = out[:, : self.out_features].to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.view(*x.shape[:-1], self.out_features)

    def nbytes(self) -> int:
        """Bytes of the packed weight (half a byte per parameter) and its scales and zeros."""
        return self.packed.numel() + self.scales_and_zeros.numel() * 2

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 weights "
                f"(group {self.group_size}), bf16 activations")
