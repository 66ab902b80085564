"""What every generation path offers ModelWorkers, the batch job and the server: requests in, results out.

Subclasses (static batches through transformers generate, or the continuous-batching engine) implement only
`_generate_all`; preprocessing, per-request errors, statistics and the load timing live here once.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from engine.config import EngineConfig
from engine.model_loader import LoadedModel, load_model
from engine.prepared_request import PreparedRequest
from engine.request import GenerationRequest, GenerationResult, RequestError, request_id_of
from engine.request_preprocessor import RequestPreprocessor
from engine.stats import PipelineStats
from engine.token_stream import DeltaSink, StreamDelta

log = logging.getLogger(__name__)


class GeneratorBase(ABC):
    """`generate(requests)` and `generate_prepared(prepared, sink)`, one result per request, in order."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        self.loaded = loaded
        self.config = config
        self.preprocessor = RequestPreprocessor(
            loaded.processor, loaded.max_model_len, config.default_max_tokens, config.max_input_pixels)
        self.stats = PipelineStats()

    @classmethod
    def from_config(cls, config: EngineConfig, **kwargs: Any) -> "GeneratorBase":
        """Load the model the config names and wrap it (the load time counts as the `load` stage)."""
        start = time.perf_counter()
        generator = cls(load_model(config), config, **kwargs)
        generator.stats.stage_seconds["load"] += time.perf_counter() - start
        return generator

    def generate(self, requests: Sequence[GenerationRequest | dict[str, Any]]) -> list[GenerationResult]:
        """Preprocess and generate; a bad request gets an error result and the others go on."""
        start = time.perf_counter()
        results: list[GenerationResult | None] = [None] * len(requests)
        prepared: list[PreparedRequest] = []
        where: list[int] = []
        with self.stats.stage("preprocess"):
            for i, raw in enumerate(requests):
                try:
                    prepared.append(self.preprocessor.prepare(raw))
                    where.append(i)
                except RequestError as exc:
                    results[i] = GenerationResult.failed(request_id_of(raw), exc)
                except Exception as exc:  # a bug or a library error on odd input must not sink the others
                    log.exception("preprocessing request %s failed", request_id_of(raw))
                    results[i] = GenerationResult.failed(request_id_of(raw), f"internal error: {exc}")
        for i, result in zip(where, self._generate_all(prepared, None)):
            results[i] = result
        self._count(results)
        self.stats.wall_seconds += time.perf_counter() - start
        return results  # type: ignore[return-value]

    def generate_prepared(self, prepared: Sequence[PreparedRequest],
                          sink: DeltaSink | None = None) -> list[GenerationResult]:
        """Generate for already preprocessed requests (the batch job preprocesses on other actors).

        With a sink, every request's text is also streamed to it while it is generated."""
        start = time.perf_counter()
        results = self._generate_all(prepared, sink)
        self._count(results)
        self.stats.wall_seconds += time.perf_counter() - start
        return results

    def stream(self, requests: Sequence[GenerationRequest | dict[str, Any]]
               ) -> Iterator[StreamDelta | GenerationResult]:
        """Text deltas as they are made, and each request's result when it ends (a bad request: its error
        result first). Results come in the order requests end, not the order given."""
        start = time.perf_counter()
        prepared: list[PreparedRequest] = []
        failed: list[GenerationResult] = []
        with self.stats.stage("preprocess"):
            for raw in requests:
                try:
                    prepared.append(self.preprocessor.prepare(raw))
                except RequestError as exc:
                    failed.append(GenerationResult.failed(request_id_of(raw), exc))
                except Exception as exc:
                    log.exception("preprocessing request %s failed", request_id_of(raw))
                    failed.append(GenerationResult.failed(request_id_of(raw), f"internal error: {exc}"))
        self._count(failed)
        yield from failed
        for event in self._stream_prepared(prepared):
            if isinstance(event, GenerationResult):
                self._count([event])
            yield event
        self.stats.wall_seconds += time.perf_counter() - start

    @abstractmethod
    def _stream_prepared(self, prepared: Sequence[PreparedRequest]) -> Iterator[StreamDelta | GenerationResult]:
        """Deltas while generating, each result when its request ends."""

    @abstractmethod
    def _generate_all(self, prepared: Sequence[PreparedRequest], sink: DeltaSink | None) -> list[GenerationResult]:
        """One result per prepared request, in order; streams to `sink` when given."""

    def _count(self, results: Sequence[GenerationResult | None]) -> None:
        for result in results:
            if result is None:
                continue
            self.stats.num_requests += 1
            if result.ok:
                self.stats.num_ok += 1
                self.stats.num_prompt_tokens += result.num_prompt_tokens
                self.stats.num_generated_tokens += result.num_generated_tokens
            else:
                self.stats.record_error(result.error_kind)

    def reset_stats(self) -> PipelineStats:
        """Return the stats so far and start new ones (load time stays with the old)."""
        old, self.stats = self.stats, PipelineStats()
        return old
