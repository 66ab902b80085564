"""Where a replica preprocesses requests: three thread pools (lanes), so that one kind of slow request cannot
hold up another. Requests that fetch http(s) images wait on the network in their own wide lane; requests with
images or large texts share a lane sized to the replica's CPUs; small text requests have a lane of their own,
so a 2-token question never queues behind six megabyte-long prompts or a slow URL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from vlray.schema import GenerationRequest

T = TypeVar("T")

LIGHT, HEAVY, FETCH = "light", "heavy", "fetch"
LIGHT_MAX_CHARS = 8192
"""Text-only requests up to this many characters take the light lane (tokenising them takes milliseconds)."""


class PreprocessPool:
    """Runs a preprocessing call in the lane its request belongs to, off the event loop."""

    def __init__(self, num_cpus: int, num_fetch_threads: int = 16) -> None:
        # Per lane, what asyncio.to_thread's own pool would be for these CPUs (cpus + 4): decoding and
        # tokenising release the GIL in parts, so a few threads past the CPUs keep them busy.
        threads = max(1, num_cpus) + 4
        self._lanes = {LIGHT: ThreadPoolExecutor(threads, thread_name_prefix="vlray-light"),
                       HEAVY: ThreadPoolExecutor(threads, thread_name_prefix="vlray-heavy"),
                       FETCH: ThreadPoolExecutor(max(1, num_fetch_threads), thread_name_prefix="vlray-fetch")}

    @staticmethod
    def lane_of(request: GenerationRequest) -> str:
        """fetch when any image is an http(s) URL, heavy with other images or a large text, else light."""
        sources, chars = list(request.images), len(request.prompt or "")
        for message in request.messages or []:
            if isinstance(message.content, str):
                chars += len(message.content)
                continue
            for part in message.content or []:
                if part.type == "text":
                    chars += len(part.text)
                else:
                    sources.append(part.image_url.url)
        if any(isinstance(s, str) and s.startswith(("http://", "https://")) for s in sources):
            return FETCH
        return HEAVY if sources or chars > LIGHT_MAX_CHARS else LIGHT

    async def run(self, request: GenerationRequest, fn: Callable[[GenerationRequest], T]) -> T:
        """fn(request) in the request's lane."""
        lane = self._lanes[self.lane_of(request)]
        return await asyncio.get_running_loop().run_in_executor(lane, fn, request)

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.shutdown(wait=False, cancel_futures=True)
