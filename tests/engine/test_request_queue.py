"""RequestQueue: bounded (counting what waits in the backend too), oldest first, cancellable, closable."""

import threading
import time

import numpy as np
import pytest

from vlray.engine.request_queue import QueuedRequest, QueueFullError, RequestQueue
from vlray.inputs.prepared_request import PreparedRequest, SamplingParams


def _item(request_id: str, num_tokens: int = 10, max_tokens: int = 10, image: bool = False) -> QueuedRequest:
    prepared = PreparedRequest(request_id, np.zeros(num_tokens, dtype=np.int64), SamplingParams(max_tokens),
                               pixel_values=np.zeros((4, 8), dtype=np.float32) if image else None)
    return QueuedRequest(prepared)


def _ids(batch):
    return [q.prepared.request_id for q in batch]


def test_take_hands_out_the_oldest_first_up_to_max_items():
    queue = RequestQueue(max_queued=10, max_batch_size=8)
    for item in [_item("t1"), _item("i1", image=True), _item("t2"), _item("i2", image=True)]:
        queue.put(item)
    assert _ids(queue.take(3, block=False)) == ["t1", "i1", "t2"]  # kinds mixed: the backend batches them
    assert _ids(queue.take(3, block=False)) == ["i2"]
    assert queue.take(3, block=False) == [] and len(queue) == 0


def test_full_queue_refuses_with_retry_after():
    queue = RequestQueue(max_queued=2, max_batch_size=8, retry_after_s=3)
    queue.put(_item("a"))
    queue.put(_item("b"))
    with pytest.raises(QueueFullError, match="2 requests are already waiting") as info:
        queue.put(_item("c"))
    assert info.value.retry_after_s == 3
    queue.take(8, block=False)
    queue.put(_item("c"))  # room again once they were taken
    with pytest.raises(QueueFullError):
        queue.put(_item("d"), num_waiting_elsewhere=1)  # c here and one waiting in the backend


def test_cancel_and_close():
    queue = RequestQueue(max_queued=5, max_batch_size=8)
    a, b, c = _item("a"), _item("b"), _item("c")
    for item in (a, b, c):
        queue.put(item)
    assert queue.cancel(b) and not queue.cancel(b)
    assert _ids(queue.close()) == ["a", "c"]
    assert queue.take(8, block=True) is None
    with pytest.raises(RuntimeError, match="closed"):
        queue.put(_item("d"))


def test_take_waits_for_work_and_gathers_what_arrives_together():
    queue = RequestQueue(max_queued=10, max_batch_size=3)
    taken = []
    thread = threading.Thread(target=lambda: taken.append(queue.take(100, block=True, wait_s=30)))
    thread.start()
    for name in ("a", "b", "c"):
        time.sleep(0.02)
        queue.put(_item(name))
    thread.join(10)  # a full batch ends the wait long before 30 s
    assert not thread.is_alive() and _ids(taken[0]) == ["a", "b", "c"]
    closer = threading.Timer(0.05, queue.close)
    closer.start()
    assert queue.take(8, block=True) is None  # closing wakes a waiting taker
