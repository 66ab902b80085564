"""AsyncEngine: concurrent asyncio callers, one generation thread. Requests wait in a bounded queue; the thread
moves them into a generation backend as it has room and steps it, sending each caller its result, or its text
as it is made.

One loop for every backend: with the continuous engine a request joins the running batch at the next step
and leaves it the step it ends; with static batches (a step runs a whole batch) requests that arrive while a
batch runs wait for a later one, and an idle backend is given batch_wait_s for a batch to fill. Nothing one
request does ends the thread: a request that fails gets its error result, a step that fails as a whole fails
the requests it ran (error_kind "step_failed"), and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator
from typing import Any

from vlray.engine.backend import STEP_FAILED, GenerationBackend, add_or_fail, failed_result
from vlray.engine.request_queue import QueuedRequest, RequestQueue
from vlray.engine.token_stream import StreamDelta
from vlray.inputs.prepared_request import PreparedRequest
from vlray.schema import GenerationResult
from vlray.stats import PipelineStats

log = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """A request failed inside the engine (not the caller's fault: its input was checked before)."""

    def __init__(self, result: GenerationResult) -> None:
        super().__init__(result.error or "generation failed")
        self.result = result


class _ReplyChannel:
    """One request's way back from the generation thread to its caller's event loop."""

    def __init__(self, is_streaming: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[StreamDelta | GenerationResult] = asyncio.Queue()
        self.is_streaming = is_streaming

    def post(self, event: StreamDelta | GenerationResult) -> None:
        """Thread-safe; a caller whose loop has closed is simply not answered."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:
            pass


class AsyncEngine:
    """`await engine.generate(prepared)` or `async for delta in engine.stream(prepared)`, from any event loop."""

    def __init__(self, backend: GenerationBackend, stats: PipelineStats | None, max_batch_size: int,
                 max_queued_requests: int = 64, batch_wait_s: float = 0.01, retry_after_s: float = 1.0) -> None:
        """stats: where results are counted (the LLM's); max_queued_requests bounds the requests waiting, in the
        queue or in the backend, not yet running."""
        self.backend = backend
        self.stats = stats
        self.batch_wait_s = batch_wait_s
        self.queue = RequestQueue(max_queued_requests, max_batch_size, retry_after_s)
        self._running: dict[str, _ReplyChannel] = {}  # requests in the backend, by request id
        # Requests whose callers left while they were in the backend (items, not ids: a caller may send the same
        # id again as soon as its first request has ended).
        self._abandoned: list[QueuedRequest] = []
        self._ids_in_flight: set[str] = set()
        self._ids_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="vlray-generate", daemon=True)
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def num_queued(self) -> int:
        """Requests waiting, in the queue or in the backend."""
        return len(self.queue) + self.backend.num_waiting()

    @property
    def num_running(self) -> int:
        return max(0, len(self._running) - self.backend.num_waiting())

    async def generate(self, prepared: PreparedRequest) -> GenerationResult:
        """The request's result (an error result if generation failed). QueueFullError when the queue is full."""
        item = self._submit(prepared, is_streaming=False)
        try:
            while True:
                event = await item.reply_to.events.get()
                if isinstance(event, GenerationResult):
                    return event
        finally:
            self._release(item)

    async def stream(self, prepared: PreparedRequest) -> AsyncGenerator[StreamDelta, None]:
        """The request's deltas as they are generated; the last has a finish_reason. GenerationError if it fails."""
        item = self._submit(prepared, is_streaming=True)
        num_chars = 0  # text received so far: a batch retried after a failure streams from the start again
        try:
            while True:
                event = await item.reply_to.events.get()
                if isinstance(event, GenerationResult):
                    if not event.ok:
                        raise GenerationError(event)
                    # An engine that did not stream this request: its whole remaining text in one delta.
                    logprobs = tuple(event.logprobs) if event.logprobs is not None else None
                    yield StreamDelta(event.id or prepared.request_id, event.text[num_chars:], tuple(event.token_ids),
                                      num_chars, event.num_prompt_tokens, event.num_generated_tokens,
                                      event.finish_reason, logprobs)
                    return
                skip = num_chars - event.text_offset
                if skip > 0 and not event.is_final and skip >= len(event.text):
                    continue
                if skip > 0:
                    event = StreamDelta(event.request_id, event.text[skip:], event.token_ids, num_chars,
                                        event.num_prompt_tokens, event.num_generated_tokens, event.finish_reason,
                                        event.logprobs)
                num_chars += len(event.text)
                yield event
                if event.is_final:
                    return
        finally:
            self._release(item)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking requests; those still waiting get an error result; wait for the running step."""
        for item in self.queue.close():
            item.reply_to.post(GenerationResult.failed(item.prepared.request_id, "the server is shutting down"))
        self._thread.join(timeout_s)

    def _submit(self, prepared: PreparedRequest, is_streaming: bool) -> QueuedRequest:
        # Deltas are routed by request id, so two requests in flight must not share one.
        with self._ids_lock:
            if prepared.request_id in self._ids_in_flight:
                raise ValueError(f"request id {prepared.request_id!r} is already in flight")
            self._ids_in_flight.add(prepared.request_id)
        item = QueuedRequest(prepared, _ReplyChannel(is_streaming))
        try:
            # The backend's count is read across threads: an int, exact enough for a bound.
            self.queue.put(item, self.backend.num_waiting())
        except Exception:
            self._release(item)
            raise
        return item

    def _release(self, item: QueuedRequest) -> None:
        if not self.queue.cancel(item) and item.prepared.request_id in self._running:
            with self._ids_lock:  # in the backend: the thread drops it at its next step
                self._abandoned.append(item)
        with self._ids_lock:
            self._ids_in_flight.discard(item.prepared.request_id)

    def _run(self) -> None:
        handles: dict[str, tuple[Any, QueuedRequest]] = {}
        while True:
            try:
                if not self._step(handles):
                    break
            except Exception as exc:  # a bug outside any one request: fail what is in the backend, keep serving
                log.exception("the generation loop failed with %d requests in the backend", len(handles))
                for handle, item in list(handles.values()):
                    self._abort_quietly(handle)
                    self._reply(item, failed_result(item.prepared, exc, STEP_FAILED))
                handles.clear()
                self._running.clear()
        for handle, item in handles.values():  # closed: what the backend still held is not run
            self._reply(item, GenerationResult.failed(item.prepared.request_id, "the server is shutting down"))

    def _step(self, handles: dict[str, tuple[Any, QueuedRequest]]) -> bool:
        """Move queued requests into the backend, drop abandoned ones, run one step; False once closed."""
        backend = self.backend
        is_idle = not backend.has_unfinished()
        wait_s = self.batch_wait_s if is_idle and backend.waits_for_batch else 0.0
        taken = self.queue.take(backend.room(), block=is_idle, wait_s=wait_s)
        if taken is None:
            return False
        for item in taken:
            request_id = item.prepared.request_id
            handle, failure = add_or_fail(backend, item.prepared)
            if failure is not None:
                self._reply(item, failure)
            else:
                handles[request_id] = (handle, item)
                self._running[request_id] = item.reply_to
        with self._ids_lock:
            abandoned, self._abandoned = self._abandoned, []
        for item in abandoned:
            request_id = item.prepared.request_id
            if request_id in handles and handles[request_id][1] is item:
                backend.abort(handles.pop(request_id)[0])
                self._running.pop(request_id, None)
        if not backend.has_unfinished():
            return True
        streaming = any(item.reply_to.is_streaming for _, item in handles.values())
        for _, result in backend.step(self._route if streaming else None):
            handle_item = handles.pop(result.id, None)
            if handle_item is not None:
                self._reply(handle_item[1], result)
            self._running.pop(result.id, None)
        return True

    def _abort_quietly(self, handle: Any) -> None:
        try:
            self.backend.abort(handle)
        except Exception:
            log.exception("aborting a request after a failed step failed too")

    def _reply(self, item: QueuedRequest, result: GenerationResult) -> None:
        if self.stats is not None:
            self.stats.count_results([result])
        item.reply_to.post(result)

    def _route(self, delta: StreamDelta) -> None:
        channel = self._running.get(delta.request_id)
        if channel is not None and channel.is_streaming:
            channel.post(delta)
