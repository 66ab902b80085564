"""n streams of one request (its n samples) as one: each delta tagged with its choice index, in the order they
arrive, so that a client reads every choice as it is made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

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


async def gather_or_cancel(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """All results, in order; when one fails, the others are cancelled (and waited for) before it is raised, so
    no sample of a refused request goes on generating, and its streams can be closed."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    if pending:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return [task.result() for task in tasks]


async def close_all(streams: Sequence[AsyncGenerator[Any, None]]) -> None:
    for stream in streams:
        await stream.aclose()
