"""The in-process LLM: a config in, results out. It composes the three parts every way in uses, a
preprocessor, a generation backend (the continuous engine, or static batches through `generate`) and the stats
they count, so that ModelWorker, the Serve replica, the batch job and a plain Python program all get from a
config to a backend the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from vlray.cache.keys import BlobCache
from vlray.cache.tiered_store import open_store
from vlray.config import EngineConfig
from vlray.engine.backend import GenerationBackend, run_to_completion, stream_to_completion
from vlray.engine.continuous_engine import ContinuousBatchingEngine
from vlray.engine.image_encoder import ImageEncoder
from vlray.engine.token_stream import DeltaSink, StreamDelta
from vlray.inputs.image_policy import ImagePolicy
from vlray.inputs.prepared_request import PreparedRequest
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.model.generation_defaults import sampling_defaults
from vlray.model.loader import LoadedModel, load_model
from vlray.schema import GenerationRequest, GenerationResult, RequestError, request_id_of
from vlray.static.static_batcher import StaticBatcher
from vlray.stats import PipelineStats

log = logging.getLogger(__name__)


def build_backend(loaded: LoadedModel, config: EngineConfig, stats: PipelineStats,
                  cache: BlobCache | None = None) -> GenerationBackend:
    """The backend the config names on a loaded model, encoding images through `cache` when the config caches
    encoder outputs."""
    encoder = ImageEncoder(loaded, stats, cache if config.uses_encoder_cache else None)
    if config.backend == "hf":
        return StaticBatcher(loaded, config, encoder, stats)
    return ContinuousBatchingEngine(loaded, config, encoder, stats)


class LLM:
    """`LLM(config).generate(requests)`, `.stream(requests)`, `.stats`: one result per request, bad ones as
    error results, never as exceptions."""

    def __init__(self, config: EngineConfig, *, loaded: LoadedModel | None = None,
                 cache: BlobCache | None = None, image_policy: ImagePolicy | None = None) -> None:
        """loaded: a model already loaded (tests and benchmarks share one); cache: where preprocessed images and
        encoder outputs go (a CacheActor's client, say), None opening a local store when the config caches;
        image_policy: which image sources requests may use (the server's), else local files and no http."""
        self.stats = PipelineStats()
        start = time.perf_counter()
        self.loaded = loaded if loaded is not None else load_model(config)
        if loaded is None:
            self.stats.stage_seconds["load"] += time.perf_counter() - start
        self.config = config
        if cache is None and config.uses_content_cache:
            cache = open_store(config)
        self.cache = cache
        self.preprocessor = RequestPreprocessor(
            self.loaded.processor, self.loaded.max_model_len, config.default_max_tokens, config.max_input_pixels,
            image_policy=image_policy, image_cache=cache if config.uses_preprocessed_cache else None,
            max_images_per_request=config.max_images_per_request, max_request_chars=config.max_request_chars,
            sampling_defaults=sampling_defaults(self.loaded.model_dir, config.sampling_defaults))
        self.backend = build_backend(self.loaded, config, self.stats, cache)

    def generate(self, requests: Sequence[GenerationRequest | dict[str, Any]]) -> list[GenerationResult]:
        """Preprocess and generate; one result per request, in order."""
        start = time.perf_counter()
        outcomes = self.preprocess(requests)
        prepared = [o for o in outcomes if isinstance(o, PreparedRequest)]
        generated = iter(run_to_completion(self.backend, prepared))
        results = [o if isinstance(o, GenerationResult) else next(generated) for o in outcomes]
        self.stats.count_results(results)
        self.stats.wall_seconds += time.perf_counter() - start
        return results

    def generate_prepared(self, prepared: Sequence[PreparedRequest],
                          sink: DeltaSink | None = None) -> list[GenerationResult]:
        """Generate for requests already preprocessed (the batch job preprocesses on other actors); with a
        sink, every request's text is streamed to it while it is generated."""
        start = time.perf_counter()
        results = run_to_completion(self.backend, prepared, sink)
        self.stats.count_results(results)
        self.stats.wall_seconds += time.perf_counter() - start
        return results

    def stream(self, requests: Sequence[GenerationRequest | dict[str, Any]]
               ) -> Iterator[StreamDelta | GenerationResult]:
        """Text deltas as they are made, and each request's result when it ends (a bad request: its error
        result first). Results come in the order requests end, not the order given."""
        start = time.perf_counter()
        outcomes = self.preprocess(requests)
        failed = [o for o in outcomes if isinstance(o, GenerationResult)]
        self.stats.count_results(failed)
        yield from failed
        for event in stream_to_completion(self.backend, [o for o in outcomes if isinstance(o, PreparedRequest)]):
            if isinstance(event, GenerationResult):
                self.stats.count_results([event])
            yield event
        self.stats.wall_seconds += time.perf_counter() - start

    def preprocess(self, requests: Sequence[GenerationRequest | dict[str, Any]]
                   ) -> list[PreparedRequest | GenerationResult]:
        """Each request prepared, or its error result."""
        image_cache = self.preprocessor.image_cache
        hits_before = image_cache.num_hits if image_cache else 0
        outcomes: list[PreparedRequest | GenerationResult] = []
        with self.stats.stage("preprocess"):
            for raw in requests:
                try:
                    outcomes.append(self.preprocessor.prepare(raw))
                except RequestError as exc:
                    outcomes.append(GenerationResult.failed(request_id_of(raw), exc))
                except Exception as exc:  # a bug or a library error on odd input must not sink the others
                    log.exception("preprocessing request %s failed", request_id_of(raw))
                    outcomes.append(GenerationResult.failed(request_id_of(raw), f"internal error: {exc}"))
        self.stats.num_preprocessed_cache_hits += (image_cache.num_hits if image_cache else 0) - hits_before
        return outcomes

    def reset_stats(self) -> PipelineStats:
        """The stats so far; counting starts again from zero (load time stays with the old)."""
        return self.stats.take()
