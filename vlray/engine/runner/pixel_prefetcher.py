"""Upload the image patches of requests about to prefill while the current step computes.

On CUDA: the host array is page-locked (pinned), copied with non_blocking=True on a separate stream, and an
event marks when it has landed; the prefill waits on that event only, so the copy of the next request's pixels
overlaps the current step's kernels (a laptop GPU on PCIe x4 spends real time on these copies). On CPU the same
calls just convert the array.
"""

from __future__ import annotations

import numpy as np
import torch


class PixelPrefetcher:
    """prefetch(key, array) early; take(key, array) when the prefill needs it (prefetching it then if not yet)."""

    def __init__(self, device: str | torch.device, dtype: torch.dtype) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.is_async = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.is_async else None
        self._pending: dict[int, tuple[torch.Tensor, torch.cuda.Event]] = {}

    def prefetch(self, key: int, pixel_values: np.ndarray) -> None:
        if not self.is_async or key in self._pending:
            return
        host = torch.from_numpy(pixel_values).pin_memory()
        with torch.cuda.stream(self.stream):
            on_device = host.to(self.device, non_blocking=True).to(self.dtype)
            landed = torch.cuda.Event()
            landed.record(self.stream)
        self._pending[key] = (on_device, landed)

    def take(self, key: int, pixel_values: np.ndarray) -> torch.Tensor:
        """The patches on the device in the model's dtype, safe to use on the current stream."""
        if not self.is_async:
            return torch.from_numpy(pixel_values).to(self.device, self.dtype)
        self.prefetch(key, pixel_values)
        on_device, landed = self._pending.pop(key)
        current = torch.cuda.current_stream(self.device)
        current.wait_event(landed)
        on_device.record_stream(current)  # the copy stream's allocation is now used on this one
        return on_device

    def drop(self, key: int) -> None:
        self._pending.pop(key, None)
