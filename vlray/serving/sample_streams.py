"""n streams of one request (its n samples) as one: each delta tagged with its choice index, in the order they
arrive, so that a client reads every choice as it is made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

_DONE = object()


async def merge_samples(firsts: Sequence[Any], streams: Sequence[AsyncGenerator[Any, None]]
                        ) -> AsyncIterator[tuple[int, Any]]:
    """(choice index, delta) from every stream, starting with each one's first delta (already taken); an error
    of any stream is raised here, and every stream is closed however this ends."""
    for index, first in enumerate(firsts):
        yield index, first
    pending = [i for i, first in enumerate(firsts) if not first.is_final]
    if len(pending) == 1:  # one sample (n=1): no tasks needed
        async for delta in streams[pending[0]]:
            yield pending[0], delta
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int) -> None:
        try:
            async for delta in streams[index]:
                await queue.put((index, delta))
        except Exception as exc:  # handed to the reader, who raises it
            await queue.put((index, exc))
        await queue.put((index, _DONE))

    tasks = [asyncio.create_task(pump(i)) for i in pending]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def close_all(streams: Sequence[AsyncGenerator[Any, None]]) -> None:
    for stream in streams:
        await stream.aclose()
