"""int8 weights with int8 dynamic activations on the CPU: fbgemm's packed GEMM (AVX2 and AVX-512 VNNI kernels).

Measured on an AVX2-only EPYC, 2 threads, one [6144 x 2048] projection (README, "Quantisation"): 0.5 ms at M=1
(fp32 4.3 ms, `_weight_int8pack_mm` with bf16 activations 1.2 ms) and 22 ms at M=128 (fp32 57 ms, bf16 337 ms),
so one kernel serves both decode and prefill. Weights are per output channel; activations are quantised per
call, per tensor, to 7 bits (`reduce_range`, which keeps AVX2's int16 pair sums from saturating).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def has_fbgemm() -> bool:
    """Whether this PyTorch build has fbgemm's quantised CPU kernels (x86 builds do; ARM builds do not)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


class Int8DynamicLinear(nn.Module):
    """A drop-in for nn.Linear on the CPU: fbgemm-packed int8 weight, int8 dynamic activations, fp32 output."""

    def __init__(self, packed: torch.ScriptObject, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self._packed = packed  # fbgemm's PackedLinearWeight: the packed int8 matrix, its scales and the bias

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8DynamicLinear:
        """Quantise a linear layer's weight per output channel (symmetric, int8) and pack it for fbgemm."""
        if not has_fbgemm():
            raise RuntimeError("int8 on the CPU needs PyTorch's fbgemm kernels (x86 builds); this build has "
                               f"{torch.backends.quantized.supported_engines}. Use quantization='none'.")
        weight = linear.weight.detach().to("cpu", torch.float32)  # [N, K]
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-8)
        zeros = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # fbgemm's prepack takes only a quantised tensor; torch < 2.15 (the project's pin) still has them
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qweight = torch.quantize_per_channel(weight, scales.double(), zeros, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().to("cpu", torch.float32)
        packed = torch.ops.quantized.linear_prepack(qweight, bias)
        return cls(packed, linear.in_features, linear.out_features)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 weight [N, K], fp32 scales [N]) unpacked again (a copy), for a tied embedding table or tests."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != torch.float32 or not flat.is_contiguous():
            flat = flat.to(torch.float32).contiguous()
        out = torch.ops.quantized.linear_dynamic(flat, self._packed, True)  # [M, N] fp32
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def nbytes(self) -> int:
        """Bytes of the packed weight (1 per parameter) and its scales."""
        return self.in_features * self.out_features + 4 * self.out_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, int8 activations"
