"""Decode steps as CUDA graphs: captured once per (batch size, context length) bucket, then replayed.

A decode step of a 2B model launches hundreds of small kernels; on a laptop GPU their launch overhead is a
large part of the step. A captured graph replays all of them with one launch. Inputs are copied into the
graph's static buffers, padded to the bucket: padded rows read and write only the KV cache's scratch block.
Buckets: batch sizes 1, 2, 4, 8, ... up to max_batch_size, and context lengths in powers of two of blocks
up to max_context_blocks; anything larger runs eagerly. Graphs are captured lazily, on first use of a bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from vlray.engine.kv_cache import SCRATCH_BLOCK

log = logging.getLogger(__name__)

DecodeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def bucket_up(value: int, limit: int) -> int | None:
    """The smallest power of two >= value, or None past limit."""
    bucket = 1
    while bucket < value:
        bucket *= 2
    return bucket if bucket <= limit else None


class _CapturedStep:
    def __init__(self, rows: int, blocks: int, device: torch.device) -> None:
        self.input_ids = torch.zeros(rows, dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.slots = torch.full((rows,), SCRATCH_BLOCK, dtype=torch.long, device=device)
        self.block_tables = torch.full((rows, blocks), SCRATCH_BLOCK, dtype=torch.long, device=device)
        self.context_lens = torch.ones(rows, dtype=torch.long, device=device)
        self.graph = torch.cuda.CUDAGraph()
        self.logits: torch.Tensor | None = None

    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.input_ids, self.positions, self.slots, self.block_tables, self.context_lens


class CudaGraphDecoder:
    """Same call as DecodeRunner.forward; replays a graph when the batch fits a bucket."""

    def __init__(self, decode: DecodeFn, max_batch_size: int, max_context_blocks: int,
                 device: str | torch.device) -> None:
        self.decode = decode
        self.max_rows = bucket_up(max_batch_size, 1 << 30)
        self.max_blocks = max_context_blocks
        self.device = torch.device(device)
        self.pool = torch.cuda.graph_pool_handle()
        self.steps: dict[tuple[int, int], _CapturedStep] = {}
        self.num_replays = 0

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                 block_tables: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
        rows, blocks = block_tables.shape
        row_bucket, block_bucket = bucket_up(rows, self.max_rows), bucket_up(blocks, self.max_blocks)
        if row_bucket is None or block_bucket is None:
            return self.decode(input_ids, positions, slots, block_tables, context_lens)
        step = self.steps.get((row_bucket, block_bucket)) or self._capture(row_bucket, block_bucket)
        # Reset the padding, then copy this step's rows in.
        step.input_ids.zero_()
        step.positions.zero_()
        step.slots.fill_(SCRATCH_BLOCK)
        step.block_tables.fill_(SCRATCH_BLOCK)
        step.context_lens.fill_(1)
        step.input_ids[:rows].copy_(input_ids, non_blocking=True)
        step.positions[:rows].copy_(positions, non_blocking=True)
        step.slots[:rows].copy_(slots, non_blocking=True)
        step.block_tables[:rows, :blocks].copy_(block_tables, non_blocking=True)
        step.context_lens[:rows].copy_(context_lens, non_blocking=True)
        step.graph.replay()
        self.num_replays += 1
        return step.logits[:rows]

    def _capture(self, rows: int, blocks: int) -> _CapturedStep:
        step = _CapturedStep(rows, blocks, self.device)
        # Warm up on a side stream (allocations, lazy initialisation) before capturing, as CUDA graphs require.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.decode(*step.inputs())
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.cuda.graph(step.graph, pool=self.pool):
            step.logits = self.decode(*step.inputs())
        self.steps[(rows, blocks)] = step
        log.info("captured a decode CUDA graph for %d rows x %d blocks", rows, blocks)
        return step
