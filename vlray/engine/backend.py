"""The step interface every generation path offers (the continuous engine, the static batcher), and the two
loops over it that turn a list of requests into results: run to completion, or stream while running.

One interface means one loop: the LLM facade, AsyncEngine and the benchmarks all drive a backend the same way,
`add` requests, `step` until `has_unfinished` is False, whatever the backend does inside a step.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from typing import Any, Protocol

from vlray.engine.token_stream import DeltaSink, StreamDelta
from vlray.inputs.prepared_request import PreparedRequest
from vlray.schema import GenerationResult, RequestError

log = logging.getLogger(__name__)

STEP_FAILED = "step_failed"
"""error_kind of a request that failed only because the step it ran in failed as a whole: retryable."""


class GenerationBackend(Protocol):
    """Requests in with `add`, results out of `step`; a step's per-request failures are error results."""

    waits_for_batch: bool
    """True when a step runs a whole batch to its end (static batches): a caller feeding it from a queue
    gives a batch a moment to fill before stepping an idle backend."""

    def add(self, prepared: PreparedRequest) -> Any:
        """Queue a request, returning its handle; RequestError when it can never run."""

    def step(self, sink: DeltaSink | None = None) -> list[tuple[Any, GenerationResult]]:
        """Run one step; the requests that ended in it (handle, result). Never raises for one request's fault."""

    def has_unfinished(self) -> bool: ...

    def abort(self, handle: Any) -> None:
        """Drop a request (its caller went away)."""

    def room(self) -> int:
        """How many more requests it takes now."""

    def num_waiting(self) -> int:
        """Requests added but not running yet."""


def failed_result(prepared: PreparedRequest, error: BaseException, kind: str | None = None) -> GenerationResult:
    """The error result of a request that failed inside a backend: its RequestError's kind, `kind`, or internal."""
    if isinstance(error, RequestError) and kind is None:
        return GenerationResult.failed(prepared.request_id, error, prepared.num_prompt_tokens)
    return GenerationResult(id=prepared.request_id, finish_reason="error", error=f"internal error: {error}",
                            error_kind=kind or "internal", num_prompt_tokens=prepared.num_prompt_tokens)


def add_or_fail(backend: GenerationBackend, prepared: PreparedRequest) -> tuple[Any, GenerationResult | None]:
    """(handle, None), or (None, its error result) when the backend refuses it or fails on it."""
    try:
        return backend.add(prepared), None
    except Exception as exc:  # a RequestError, or anything odd one request's values raise (a huge seed)
        if not isinstance(exc, RequestError):
            log.exception("adding request %s failed", prepared.request_id)
        return None, failed_result(prepared, exc)


def run_to_completion(backend: GenerationBackend, prepared: Seq[PreparedRequest],
                      sink: DeltaSink | None = None) -> list[GenerationResult]:
    """One result per request, in order; deltas go to `sink` as they are made."""
    results: list[GenerationResult | None] = [None] * len(prepared)
    where: dict[int, int] = {}  # id(handle) -> index; request ids need not be unique in a list
    handles = []
    for index, request in enumerate(prepared):
        handle, failure = add_or_fail(backend, request)
        if failure is not None:
            results[index] = failure
        else:
            where[id(handle)] = index
            handles.append(handle)  # keeps handles alive, so their ids stay theirs
    while backend.has_unfinished():
        for handle, result in backend.step(sink):
            if id(handle) in where:
                results[where[id(handle)]] = result
    return results  # type: ignore[return-value]


def stream_to_completion(backend: GenerationBackend, prepared: Seq[PreparedRequest]
                         ) -> Iterator[StreamDelta | GenerationResult]:
    """Deltas as they are made and each result as its request ends. The steps run on a helper thread, so a
    backend whose step runs a whole batch (static) still streams token by token; a consumer that stops early
    stops the steps and leaves nothing of its requests in the backend."""
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    done = object()

    def work() -> None:
        handles: dict[int, Any] = {}
        try:
            for request in prepared:
                handle, failure = add_or_fail(backend, request)
                if failure is not None:
                    events.put(failure)
                else:
                    handles[id(handle)] = handle
            while handles and backend.has_unfinished() and not stop.is_set():
                for handle, result in backend.step(events.put):
                    handles.pop(id(handle), None)
                    events.put(result)
            for handle in handles.values():  # the consumer left: drop what is still in the backend
                backend.abort(handle)
        except BaseException as exc:  # handed to the consumer, raised there
            events.put(exc)
        events.put(done)

    thread = threading.Thread(target=work, name="vlray-stream", daemon=True)
    thread.start()
    try:
        while (event := events.get()) is not done:
            if isinstance(event, BaseException):
                raise event
            yield event
    finally:
        stop.set()
        thread.join()
