"""AsyncEngine: concurrent asyncio callers, one generation thread. Requests wait in a bounded queue; the thread
feeds them to the generator and sends each caller its result, or its text as it is made.

Two ways to feed, by what the generator can do:
- a step engine (the continuous-batching engine): at every step the thread moves newly queued requests into
  it, so a request joins the running batch at the next step and leaves it the step it ends;
- a batch generator (static batches through transformers generate): the thread takes the next batch from the
  queue and runs it to the end; requests that arrive meanwhile wait for the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol, runtime_checkable

from vlray.engine.request_queue import QueuedRequest, RequestQueue
from vlray.engine.token_stream import DeltaSink, StreamDelta
from vlray.inputs.prepared_request import PreparedRequest
from vlray.schema import GenerationResult, RequestError

log = logging.getLogger(__name__)


class StreamingGenerator(Protocol):
    """What AsyncEngine runs batches on (BatchGenerator is one)."""

    def generate_prepared(self, prepared: Sequence[PreparedRequest],
                          sink: DeltaSink | None = None) -> list[GenerationResult]: ...


@runtime_checkable
class StepEngine(Protocol):
    """A generator that takes requests at any step (ContinuousBatchingEngine is one)."""

    def add(self, prepared: PreparedRequest) -> Any: ...

    def step(self, sink: DeltaSink | None = None) -> list[tuple[Any, GenerationResult]]: ...

    def has_unfinished(self) -> bool: ...

    def abort(self, handle: Any) -> None: ...

    def count_results(self, results: Sequence[GenerationResult]) -> None: ...


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

    def __init__(self, generator: StreamingGenerator, max_batch_tokens: int, max_batch_size: int,
                 max_queued_requests: int = 64, batch_wait_s: float = 0.01, retry_after_s: float = 1.0,
                 bucket: bool = True) -> None:
        """bucket: how a static-batch generator's batches are cut from the queue (see RequestQueue)."""
        self.generator = generator
        self.batch_wait_s = batch_wait_s
        self.queue = RequestQueue(max_queued_requests, max_batch_tokens, max_batch_size, retry_after_s, bucket)
        self.max_batch_size = max_batch_size
        self._running: dict[str, _ReplyChannel] = {}  # the batch on the thread, by request id
        self._abandoned: set[str] = set()  # request ids whose callers left while they ran (step engines)
        self._ids_in_flight: set[str] = set()
        self._ids_lock = threading.Lock()
        run = self._run_steps if isinstance(generator, StepEngine) else self._run_batches
        self._thread = threading.Thread(target=run, name="vlray-generate", daemon=True)
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def num_queued(self) -> int:
        return len(self.queue)

    @property
    def num_running(self) -> int:
        return len(self._running)

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
                    yield StreamDelta(event.id or prepared.request_id, event.text[num_chars:], tuple(event.token_ids),
                                      num_chars, event.num_prompt_tokens, event.num_generated_tokens,
                                      event.finish_reason)
                    return
                skip = num_chars - event.text_offset
                if skip > 0 and not event.is_final and skip >= len(event.text):
                    continue
                if skip > 0:
                    event = StreamDelta(event.request_id, event.text[skip:], event.token_ids, num_chars,
                                        event.num_prompt_tokens, event.num_generated_tokens, event.finish_reason)
                num_chars += len(event.text)
                yield event
                if event.is_final:
                    return
        finally:
            self._release(item)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking batches; requests still waiting get an error result; wait for the running batch."""
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
            self.queue.put(item)
        except Exception:
            self._release(item)
            raise
        return item

    def _release(self, item: QueuedRequest) -> None:
        if not self.queue.cancel(item) and item.prepared.request_id in self._running:
            with self._ids_lock:  # running in a step engine: the thread drops it at its next step
                self._abandoned.add(item.prepared.request_id)
        with self._ids_lock:
            self._ids_in_flight.discard(item.prepared.request_id)

    def _run_steps(self) -> None:
        engine: StepEngine = self.generator  # type: ignore[assignment]
        handles: dict[str, tuple[Any, QueuedRequest]] = {}
        while True:
            room = max(0, self.max_batch_size - len(handles))
            taken = self.queue.take_available(room, block=not handles)
            if taken is None:
                break
            for item in taken:
                try:
                    handles[item.prepared.request_id] = (engine.add(item.prepared), item)
                    self._running[item.prepared.request_id] = item.reply_to
                except RequestError as exc:
                    self._reply(engine, item, GenerationResult.failed(item.prepared.request_id, exc))
            with self._ids_lock:
                abandoned, self._abandoned = self._abandoned, set()
            for request_id in abandoned & handles.keys():
                engine.abort(handles.pop(request_id)[0])
                self._running.pop(request_id, None)
            if not handles:
                continue
            try:
                finished = engine.step(self._route)
            except Exception as exc:  # a bug or out of memory: fail what runs, keep serving
                log.exception("an engine step failed with %d requests running", len(handles))
                for handle, item in handles.values():
                    engine.abort(handle)
                    self._reply(engine, item, GenerationResult.failed(item.prepared.request_id,
                                                                      f"internal error: {exc}"))
                handles.clear()
                self._running.clear()
                continue
            for _, result in finished:
                handle_item = handles.pop(result.id, None)
                if handle_item is not None:
                    self._reply(engine, handle_item[1], result)
                self._running.pop(result.id, None)

    @staticmethod
    def _reply(engine: StepEngine, item: QueuedRequest, result: GenerationResult) -> None:
        engine.count_results([result])  # the step API leaves counting to its caller
        item.reply_to.post(result)

    def _run_batches(self) -> None:
        while (batch := self.queue.take_batch(self.batch_wait_s)) is not None:
            self._running = {item.prepared.request_id: item.reply_to for item in batch}
            sink = self._route if any(item.reply_to.is_streaming for item in batch) else None
            try:
                results = self.generator.generate_prepared([item.prepared for item in batch], sink)
            except Exception as exc:  # the generator turns request faults into error results: this is a bug
                log.exception("a batch of %d failed", len(batch))
                results = [GenerationResult.failed(item.prepared.request_id, f"internal error: {exc}")
                           for item in batch]
            for item, result in zip(batch, results):
                item.reply_to.post(result)
            self._running = {}

    def _route(self, delta: StreamDelta) -> None:
        channel = self._running.get(delta.request_id)
        if channel is not None and channel.is_streaming:
            channel.post(delta)
