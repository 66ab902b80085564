"""n samples' streams merged by choice index, and a refused sample cancelling its siblings."""

import asyncio
from dataclasses import dataclass

import pytest

from vlray.serving.sample_streams import gather_or_cancel, merge_samples


def test_merged_samples_keep_each_ones_order_and_a_failure_cancels_the_rest():
    @dataclass
    class D:
        text: str
        is_final: bool = False

    async def stream(name, n, delay):
        for i in range(n):
            await asyncio.sleep(delay)
            yield D(f"{name}{i}", i == n - 1)

    async def merged():
        streams = [stream("a", 4, 0.001), stream("b", 3, 0.002), stream("c", 1, 0)]
        firsts = [await anext(s) for s in streams]
        return [(i, d.text) async for i, d in merge_samples(firsts, streams)]

    out = asyncio.run(merged())
    for index, name, n in ((0, "a", 4), (1, "b", 3), (2, "c", 1)):
        assert [t for i, t in out if i == index] == [f"{name}{k}" for k in range(n)]

    cancelled = []

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    async def fails():
        raise ValueError("queue full")

    with pytest.raises(ValueError, match="queue full"):
        asyncio.run(gather_or_cancel([slow(), fails()]))
    assert cancelled == [1]
