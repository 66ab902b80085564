"""int8 weights with int8 dynamic activations on the CPU: fbgemm's packed GEMM (AVX2 and AVX-512 VNNI kernels).

Measured on an AVX2-only EPYC, 2 threads, one [6144 x 2048] projection (README, "Quantisation"): 0.5 ms at M=1
(fp32 4.3 ms, `_weight_int8pack_mm` with bf16 activations 1.2 ms) and 22 ms at M=128 (fp32 57 ms, bf16 337 ms),
so one kernel serves both decode and prefill. Weights are per output channel; activations are quantised per
call, to 7 bits (`reduce_range`, which keeps AVX2's int16 pair sums from saturating).

fbgemm picks one activation scale per call from the whole input: a token's output would then depend on the other
rows of its batch, and the engine's batched decode would drift from `generate`'s one-at-a-time tokens. So each
row is divided by its own max |x| first, and one extra row holding +1 and -1 pins the range fbgemm sees to
[-1, 1] whatever the batch: per-token scales, batch-invariant results (int32 sums are exact), one cheap row more.
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

    def __init__(self, packed: torch.ScriptObject, in_features: int, out_features: int,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self._packed = packed  # fbgemm's PackedLinearWeight: the packed int8 matrix and its scales
        range_row = torch.zeros(1, in_features)
        range_row[0, 0], range_row[0, -1] = 1.0, -1.0
        self.register_buffer("range_row", range_row, persistent=False)  # [1, K]: pins fbgemm's range to [-1, 1]
        self.register_buffer("bias", bias)  # [N] fp32 or None, added after the per-row rescale

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8DynamicLinear:
        """Quantise a linear layer's weight per output channel (symmetric, int8) and pack it for fbgemm."""
        if not has_fbgemm():
            raise RuntimeError("int8 on the CPU needs PyTorch's fbgemm kernels (x86 builds); this build has "
                               f"{torch.backends.quantized.supported_engines}. Use quantization='none'.")
        weight = linear.weight.detach().to("cpu", torch.float32)  # [N, K]
        # max |w| per row in chunks: a full-size temporary of a 151936-row head would be 1.2 GB
        scales = torch.cat([chunk.abs().amax(dim=1) for chunk in weight.split(8192)]).div(127).clamp(min=1e-8)
        zeros = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # fbgemm's prepack takes only a quantised tensor; torch < 2.15 (the project's pin) still has them
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qweight = torch.quantize_per_channel(weight, scales.double(), zeros, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().to("cpu", torch.float32)
        packed = torch.ops.quantized.linear_prepack(qweight, None)
        return cls(packed, linear.in_features, linear.out_features, bias)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 weight [N, K], fp32 scales [N]) unpacked again (a copy), for a tied embedding table or tests."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.float32)
        row_scale = flat.abs().amax(dim=-1, keepdim=True).clamp(min=1e-30)  # [M, 1]
        normed = torch.cat([flat / row_scale, self.range_row.to(torch.float32)])  # [M + 1, K], all in [-1, 1]
        out = torch.ops.quantized.linear_dynamic(normed, self._packed, True)[:-1] * row_scale  # [M, N] fp32
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def nbytes(self) -> int:
        """Bytes of the packed weight (1 per parameter) and its scales."""
        return self.in_features * self.out_features + 4 * self.out_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, int8 activations"
