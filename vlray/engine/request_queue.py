"""A bounded, thread-safe FIFO of prepared requests that hands out the next model batch: the oldest request and
the requests that batch best with it (same kind, like length, within the token budget). Plain Python."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from vlray.engine.bucketing import BatchItem, plan_batches
from vlray.inputs.prepared_request import PreparedRequest


class QueueFullError(RuntimeError):
    """The queue holds its maximum: the caller should come back after `retry_after_s`."""

    def __init__(self, max_queued: int, retry_after_s: float) -> None:
        super().__init__(f"the server is busy: {max_queued} requests are already waiting; retry after "
                         f"{retry_after_s:g} s")
        self.max_queued = max_queued
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class QueuedRequest:
    """A prepared request waiting for a batch, with whatever its caller needs to get the answer back."""

    prepared: PreparedRequest
    reply_to: Any = None


class RequestQueue:
    """Bounded FIFO; `take_batch` blocks until there is work and returns one model batch of it."""

    def __init__(self, max_queued: int, max_batch_tokens: int, max_batch_size: int,
                 retry_after_s: float = 1.0, bucket: bool = True) -> None:
        """bucket=False: batches are cut from the queue in arrival order, kinds and lengths mixed (the baseline
        the batch job's --no-bucketing measures); True groups waiting requests by kind and prompt length."""
        if max_queued < 1:
            raise ValueError(f"max_queued={max_queued} must be at least 1")
        self.max_queued = max_queued
        self.max_batch_tokens = max_batch_tokens
        self.bucket = bucket
        self.max_batch_size = max_batch_size
        self.retry_after_s = retry_after_s
        self._pending: deque[QueuedRequest] = deque()
        self._changed = threading.Condition()
        self._is_closed = False

    def __len__(self) -> int:
        with self._changed:
            return len(self._pending)

    def put(self, item: QueuedRequest) -> None:
        """Queue one request; QueueFullError when max_queued are already waiting."""
        with self._changed:
            if self._is_closed:
                raise RuntimeError("the request queue is closed")
            if len(self._pending) >= self.max_queued:
                raise QueueFullError(self.max_queued, self.retry_after_s)
            self._pending.append(item)
            self._changed.notify_all()

    def cancel(self, item: QueuedRequest) -> bool:
        """Drop a request that is still waiting; False if a batch already took it."""
        with self._changed:
            try:
                self._pending.remove(item)
                return True
            except ValueError:
                return False

    def take_batch(self, wait_s: float = 0.0) -> list[QueuedRequest] | None:
        """The next batch, in arrival order; None once closed.

        Blocks until a request is there, then waits up to wait_s for more to arrive (requests sent together
        rarely land in the same instant) unless a full batch is already waiting."""
        with self._changed:
            while not self._pending and not self._is_closed:
                self._changed.wait()
            deadline = time.monotonic() + wait_s
            while not self._is_closed and len(self._pending) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            if self._is_closed:
                return None
            return self._pop_next_batch()

    def take_available(self, max_items: int, block: bool) -> list[QueuedRequest] | None:
        """Up to max_items waiting requests, oldest first (a continuous engine takes them at every step);
        with block, waits until there is one. None once closed."""
        with self._changed:
            while block and not self._pending and not self._is_closed:
                self._changed.wait()
            if self._is_closed:
                return None
            taken = [self._pending.popleft() for _ in range(min(max_items, len(self._pending)))]
            return taken

    def close(self) -> list[QueuedRequest]:
        """Stop handing out batches; returns the requests that were still waiting."""
        with self._changed:
            self._is_closed = True
            left, self._pending = list(self._pending), deque()
            self._changed.notify_all()
            return left

    def _pop_next_batch(self) -> list[QueuedRequest]:
        items = [BatchItem(i, q.prepared.kind, q.prepared.num_prompt_tokens, q.prepared.sampling.max_tokens)
                 for i, q in enumerate(self._pending)]
        # The batch that holds the oldest request, so that none waits forever behind better-fitting newcomers.
        batches = plan_batches(items, self.max_batch_tokens, self.max_batch_size, self.bucket)
        chosen = {item.index for item in next(b for b in batches if any(item.index == 0 for item in b))}
        taken = [q for i, q in enumerate(self._pending) if i in chosen]
        self._pending = deque(q for i, q in enumerate(self._pending) if i not in chosen)
        return taken
