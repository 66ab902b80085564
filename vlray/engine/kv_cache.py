"""The KV cache: preallocated once, as blocks of token slots, sized from a memory budget.

Layout per layer: [num_blocks, block_size, num_kv_heads, head_dim], so a token's K (or V) is one row of the
flattened [slots, heads, dim] view and a sequence's context is its blocks gathered in block-table order.
Block 0 is never handed out: padded rows of a CUDA-graph batch read and write there.

A split model (model/placement.py) keeps each layer's K/V beside the layer: the GPU's layers in fp16 there, the
CPU's in fp32 in RAM. Block ids are shared, so one block table addresses a sequence's context on both sides.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlray.model.device_profile import DeviceProfile

SCRATCH_BLOCK = 0
DEFAULT_CPU_KV_CACHE_BYTES = 2 << 30


@dataclass(frozen=True, slots=True)
class KVCacheShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        """K and V of every layer for one token."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.empty((), dtype=dtype).element_size()

    def blocks_for_budget(self, budget_bytes: int, dtype: torch.dtype) -> int:
        return budget_bytes // (self.block_size * self.bytes_per_token(dtype))


def kv_cache_budget(profile: DeviceProfile, explicit_bytes: int | None, memory_fraction: float,
                    most_useful_bytes: int) -> int:
    """Bytes for the cache: as configured; on CUDA otherwise a fraction of the memory still free after the
    model loaded; on CPU otherwise 2 GiB, or less when that is more than the engine could ever fill
    (`most_useful_bytes`: every seat holding a full context)."""
    if explicit_bytes is not None:
        return explicit_bytes
    if profile.is_cuda:
        free, _ = torch.cuda.mem_get_info(torch.device(profile.device))
        return int(free * memory_fraction)
    return min(DEFAULT_CPU_KV_CACHE_BYTES, most_useful_bytes)


def layer_block_bytes(shape: KVCacheShape, dtype: torch.dtype) -> int:
    """K and V of one layer for one block."""
    return 2 * shape.block_size * shape.num_kv_heads * shape.head_dim * dtype.itemsize


def blocks_for_sides(shape: KVCacheShape, sides: Sequence[tuple[torch.device, torch.dtype]],
                     budget_bytes: int, cpu_budget_bytes: int | None = None) -> int:
    """Blocks of a cache whose layers sit on `sides`: `budget_bytes` for all of them, or, given
    `cpu_budget_bytes`, `budget_bytes` for the GPU's layers and that for the CPU's (the fewer blocks wins)."""
    if cpu_budget_bytes is None:
        return budget_bytes // sum(layer_block_bytes(shape, dtype) for _, dtype in sides)
    gpu = sum(layer_block_bytes(shape, dtype) for device, dtype in sides if device.type != "cpu")
    cpu = sum(layer_block_bytes(shape, dtype) for device, dtype in sides if device.type == "cpu")
    return min(budget_bytes // gpu if gpu else 1 << 62, cpu_budget_bytes // cpu if cpu else 1 << 62)


class KVCache:
    """K and V tensors for every layer, and the two operations on them: write slots, gather sequences."""

    def __init__(self, shape: KVCacheShape, num_blocks: int, dtype: torch.dtype, device: str | torch.device,
                 layer_sides: Sequence[tuple[torch.device, torch.dtype]] | None = None) -> None:
        """`layer_sides`: each layer's (device, dtype) when they differ (a split model); else all on `device`."""
        if num_blocks < 2:
            raise ValueError(f"a KV cache of {num_blocks} blocks is too small: raise the KV cache budget")
        self.shape = shape
        self.num_blocks = num_blocks
        sides = list(layer_sides) if layer_sides is not None else [(torch.device(device), dtype)] * shape.num_layers
        if len(sides) != shape.num_layers:
            raise ValueError(f"{len(sides)} layer sides for {shape.num_layers} layers")
        self.k_layers: list[torch.Tensor] = []  # per layer [num_blocks, block_size, kv heads, head dim]
        self.v_layers: list[torch.Tensor] = []
        for (side_device, side_dtype), run in itertools.groupby(sides):
            size = (len(list(run)), num_blocks, shape.block_size, shape.num_kv_heads, shape.head_dim)
            # Zeros, not empty: attention masks a block's unused tail, but a masked weight of 0 times a NaN left
            # in uninitialised memory is still NaN. One tensor per run of layers on one side.
            keys, values = (torch.zeros(size, dtype=side_dtype, device=side_device) for _ in "kv")
            self.k_layers += [keys[i] for i in range(size[0])]  # (plain views: unbind's may not be written into)
            self.v_layers += [values[i] for i in range(size[0])]

    def layer_device(self, layer: int) -> torch.device:
        return self.k_layers[layer].device

    def per_layer(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """`tensor` on each layer's device (slots, block tables), copied once per device, not once per layer."""
        copies = {device: tensor.to(device) for device in {k.device for k in self.k_layers}}
        return [copies[k.device] for k in self.k_layers]

    @property
    def block_size(self) -> int:
        return self.shape.block_size

    @property
    def usable_block_ids(self) -> range:
        return range(SCRATCH_BLOCK + 1, self.num_blocks)

    @property
    def num_bytes(self) -> int:
        return sum(2 * k.numel() * k.element_size() for k in self.k_layers)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K/V rows [N, heads, dim] at slots [N]."""
        heads, dim = self.shape.num_kv_heads, self.shape.head_dim
        keys, values = self.k_layers[layer], self.v_layers[layer]
        keys.view(-1, heads, dim).index_copy_(0, slots, k.to(keys.dtype))
        values.view(-1, heads, dim).index_copy_(0, slots, v.to(values.dtype))

    def gather(self, layer: int, block_tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Contexts of block tables [B, nb] as K, V [B, heads, nb x block_size, dim] (SDPA's layout)."""
        rows, num_blocks = block_tables.shape
        length = num_blocks * self.shape.block_size
        # index_select on the flat table, not k[layer][block_tables]: the same copy, about 2x faster on CPU.
        flat = block_tables.reshape(-1)
        view = (rows, length, self.shape.num_kv_heads, self.shape.head_dim)
        k = self.k_layers[layer].index_select(0, flat).view(view)
        v = self.v_layers[layer].index_select(0, flat).view(view)
        return k.transpose(1, 2), v.transpose(1, 2)
