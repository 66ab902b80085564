"""An embedding table in int8 with one scale per row: the lookup of a quantised model whose LM head was tied.

Qwen3-VL-2B ties its 151936 x 2048 LM head to the embeddings. Once the head is quantised for its GEMV, the lookup
still needs a table; keeping it in fp32 would cost 1.24 GB, in int8 it costs 0.31 GB, and a lookup reads only a
few rows per step, so dequantising them costs nothing measurable.
"""

from __future__ import annotations

import torch
from torch import nn


class Int8Embedding(nn.Module):
    """A drop-in for nn.Embedding: int8 rows [V, D] with fp32 scales [V], dequantised to `dtype` on lookup."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype,
                 padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = codes.shape
        self.padding_idx = padding_idx
        self.dtype = dtype
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, dtype: torch.dtype | None = None) -> Int8Embedding:
        """Quantise each row symmetrically to int8 (scale = max |row| / 127)."""
        weight = embedding.weight.detach()
        codes = torch.empty(weight.shape, dtype=torch.int8)  # [V, D]
        scales = torch.empty(weight.shape[0])  # [V]
        for start in range(0, weight.shape[0], 8192):  # in row chunks: no full-size fp32 temporaries
            rows = weight[start : start + 8192].to(torch.float32)
            chunk_scales = (rows.abs().amax(dim=1) / 127).clamp(min=1e-8)
            codes[start : start + 8192] = torch.round(rows / chunk_scales[:, None])
            scales[start : start + 8192] = chunk_scales
        return cls(codes, scales, dtype or embedding.weight.dtype, embedding.padding_idx)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.codes[input_ids].to(torch.float32) * self.scales[input_ids].unsqueeze(-1)  # [..., D]
        return rows.to(self.dtype)

    def nbytes(self) -> int:
        return self.codes.numel() + 4 * self.scales.numel()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"
