"""RequestQueue: bounded, oldest first, one kind per batch within the token budget, cancellable, closable."""

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


def test_the_batch_holds_the_oldest_request_and_its_kind_only():
    queue = RequestQueue(max_queued=10, max_batch_tokens=1000, max_batch_size=8)
    for item in [_item("t1"), _item("i1", image=True), _item("t2"), _item("i2", image=True)]:
        queue.put(item)
    assert _ids(queue.take_batch()) == ["t1", "t2"]
    assert _ids(queue.take_batch()) == ["i1", "i2"]
    assert len(queue) == 0


def test_without_bucketing_batches_follow_arrival_order():
    queue = RequestQueue(max_queued=10, max_batch_tokens=1000, max_batch_size=3, bucket=False)
    for item in [_item("t1"), _item("i1", image=True), _item("t2"), _item("i2", image=True)]:
        queue.put(item)
    assert _ids(queue.take_batch()) == ["t1", "i1", "t2"]  # kinds mixed, as they came
    assert _ids(queue.take_batch()) == ["i2"]


def test_token_budget_and_batch_size_cut_batches():
    queue = RequestQueue(max_queued=10, max_batch_tokens=100, max_batch_size=3)
    # rows x (longest prompt + most new tokens): 3 x (20 + 10) = 90 fits, a 4th row would not fit the size.
    for i in range(4):
        queue.put(_item(f"a{i}", num_tokens=20))
    queue.put(_item("long", num_tokens=80))
    assert _ids(queue.take_batch()) == ["a0", "a1", "a2"]
    assert _ids(queue.take_batch()) == ["a3"]  # a3 + long would cost 2 x 90
    assert _ids(queue.take_batch()) == ["long"]


def test_full_queue_refuses_with_retry_after():
    queue = RequestQueue(max_queued=2, max_batch_tokens=1000, max_batch_size=8, retry_after_s=3)
    queue.put(_item("a"))
    queue.put(_item("b"))
    with pytest.raises(QueueFullError, match="2 requests are already waiting") as info:
        queue.put(_item("c"))
    assert info.value.retry_after_s == 3
    queue.take_batch()
    queue.put(_item("c"))  # room again once a batch was taken


def test_cancel_and_close():
    queue = RequestQueue(max_queued=5, max_batch_tokens=1000, max_batch_size=8)
    a, b, c = _item("a"), _item("b"), _item("c")
    for item in (a, b, c):
        queue.put(item)
    assert queue.cancel(b) and not queue.cancel(b)
    assert _ids(queue.close()) == ["a", "c"]
    assert queue.take_batch() is None
    with pytest.raises(RuntimeError, match="closed"):
        queue.put(_item("d"))


def test_take_batch_waits_for_work_and_gathers_what_arrives_together():
    queue = RequestQueue(max_queued=10, max_batch_tokens=1000, max_batch_size=3)
    taken = []
    thread = threading.Thread(target=lambda: taken.append(queue.take_batch(wait_s=30)))
    thread.start()
    for name in ("a", "b", "c"):
        time.sleep(0.02)
        queue.put(_item(name))
    thread.join(10)  # a full batch ends the wait long before 30 s
    assert not thread.is_alive() and _ids(taken[0]) == ["a", "b", "c"]
    closer = threading.Timer(0.05, queue.close)
    closer.start()
    assert queue.take_batch() is None  # closing wakes a waiting taker
