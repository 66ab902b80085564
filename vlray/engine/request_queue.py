"""A bounded, thread-safe FIFO of prepared requests between their callers and the generation thread, which
takes the oldest ones as its backend has room (the backend batches them as it sees fit). Plain Python."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

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
    """A prepared request waiting for the generation thread, with whatever its caller needs to get the answer
    back."""

    prepared: PreparedRequest
    reply_to: Any = None


class RequestQueue:
    """Bounded FIFO between callers and the generation thread; `take` hands out the oldest waiting requests."""

    def __init__(self, max_queued: int, max_batch_size: int, retry_after_s: float = 1.0) -> None:
        """max_batch_size: a full batch, which ends take's wait for more."""
        if max_queued < 1:
            raise ValueError(f"max_queued={max_queued} must be at least 1")
        self.max_queued = max_queued
        self.max_batch_size = max_batch_size
        self.retry_after_s = retry_after_s
        self._pending: deque[QueuedRequest] = deque()
        self._changed = threading.Condition()
        self._is_closed = False

    def __len__(self) -> int:
        with self._changed:
            return len(self._pending)

    def put(self, item: QueuedRequest, num_waiting_elsewhere: int = 0) -> None:
        """Queue one request; QueueFullError when max_queued are already waiting, here or (the count given)
        in the engine that takes from this queue."""
        with self._changed:
            if self._is_closed:
                raise RuntimeError("the request queue is closed")
            if len(self._pending) + num_waiting_elsewhere >= self.max_queued:
                raise QueueFullError(self.max_queued, self.retry_after_s)
            self._pending.append(item)
            self._changed.notify_all()

    def cancel(self, item: QueuedRequest) -> bool:
        """Drop a request that is still waiting; False if it was already taken."""
        with self._changed:
            try:
                self._pending.remove(item)
                return True
            except ValueError:
                return False

    def take(self, max_items: int, block: bool, wait_s: float = 0.0) -> list[QueuedRequest] | None:
        """Up to max_items waiting requests, oldest first; None once closed.

        block: wait until there is one; then wait up to wait_s for more to arrive (requests sent together
        rarely land in the same instant) unless a full batch, or max_items, is already waiting."""
        with self._changed:
            while block and not self._pending and not self._is_closed:
                self._changed.wait()
            if self._pending and wait_s > 0:
                deadline = time.monotonic() + wait_s
                while not self._is_closed and len(self._pending) < min(max_items, self.max_batch_size):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
            if self._is_closed:
                return None
            return [self._pending.popleft() for _ in range(min(max_items, len(self._pending)))]

    def close(self) -> list[QueuedRequest]:
        """Stop handing out requests; returns the requests that were still waiting."""
        with self._changed:
            self._is_closed = True
            left, self._pending = list(self._pending), deque()
            self._changed.notify_all()
            return left
