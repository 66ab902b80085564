"""What every generation path offers ModelWorkers, the batch job and the server: requests in, results out.

Subclasses (static batches through transformers generate, or the continuous-batching engine) implement only
`_generate_all` and `_stream_prepared`; preprocessing (through the preprocessed-image cache), the vision
encoder (through the encoder-output cache), per-request errors, statistics and the load timing live here once.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from vlray.cache.keys import BlobCache, processor_settings
from vlray.cache.tiered_store import open_store
from vlray.config import EngineConfig
from vlray.engine.token_stream import DeltaSink, StreamDelta
from vlray.inputs.prepared_request import PreparedRequest
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.model.loader import LoadedModel, load_model
from vlray.model.vision_encoder import ImageFeatures, VisionEncoder
from vlray.model.vision_encoder_cache import CachedVisionEncoder
from vlray.schema import GenerationRequest, GenerationResult, RequestError, request_id_of
from vlray.stats import PipelineStats

log = logging.getLogger(__name__)


class GeneratorBase(ABC):
    """`generate(requests)` and `generate_prepared(prepared, sink)`, one result per request, in order."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig, cache: BlobCache | None = None) -> None:
        """`cache`: where preprocessed images and encoder outputs go (a CacheActor's client, say); None opens a
        local TieredStore as the config says, when the config caches either."""
        self.loaded = loaded
        self.config = config
        if cache is None and config.uses_content_cache:
            cache = open_store(config)
        self.cache = cache
        self.preprocessor = RequestPreprocessor(
            loaded.processor, loaded.max_model_len, config.default_max_tokens, config.max_input_pixels,
            image_cache=cache if config.uses_preprocessed_cache else None)
        self.vision_encoder = VisionEncoder(loaded.model, loaded.profile)
        self.encoder_cache = (
            CachedVisionEncoder(self.vision_encoder, cache, processor_settings(loaded.processor), loaded.fingerprint)
            if config.uses_encoder_cache and cache is not None else None)
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
        prepared, where = [], []
        for i, outcome in enumerate(self._preprocess_all(requests)):
            if isinstance(outcome, GenerationResult):
                results[i] = outcome
            else:
                prepared.append(outcome)
                where.append(i)
        for i, result in zip(where, self._generate_all(prepared, None)):
            results[i] = result
        self.count_results(results)
        self.stats.wall_seconds += time.perf_counter() - start
        return results  # type: ignore[return-value]

    def generate_prepared(self, prepared: Sequence[PreparedRequest],
                          sink: DeltaSink | None = None) -> list[GenerationResult]:
        """Generate for already preprocessed requests (the batch job preprocesses on other actors).

        With a sink, every request's text is also streamed to it while it is generated."""
        start = time.perf_counter()
        results = self._generate_all(prepared, sink)
        self.count_results(results)
        self.stats.wall_seconds += time.perf_counter() - start
        return results

    def stream(self, requests: Sequence[GenerationRequest | dict[str, Any]]
               ) -> Iterator[StreamDelta | GenerationResult]:
        """Text deltas as they are made, and each request's result when it ends (a bad request: its error
        result first). Results come in the order requests end, not the order given."""
        start = time.perf_counter()
        outcomes = self._preprocess_all(requests)
        failed = [o for o in outcomes if isinstance(o, GenerationResult)]
        self.count_results(failed)
        yield from failed
        for event in self._stream_prepared([o for o in outcomes if not isinstance(o, GenerationResult)]):
            if isinstance(event, GenerationResult):
                self.count_results([event])
            yield event
        self.stats.wall_seconds += time.perf_counter() - start

    def encode_images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor,
                      image_hashes: Sequence[str]) -> list[ImageFeatures]:
        """Vision-encoder outputs of packed images (from the cache where it has them), counted in the stats."""
        calls, images = self.vision_encoder.num_calls, self.vision_encoder.num_images
        with self.stats.stage("encode"):
            if self.encoder_cache is not None:
                features = self.encoder_cache.encode(pixel_values, grid_thw, image_hashes)
            else:
                features = self.vision_encoder.encode(pixel_values, grid_thw)
        self.stats.num_images += int(grid_thw.shape[0])
        self.stats.num_encoder_calls += self.vision_encoder.num_calls - calls
        self.stats.num_images_encoded += self.vision_encoder.num_images - images
        return features

    def _preprocess_all(self, requests: Sequence[GenerationRequest | dict[str, Any]]
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

    @abstractmethod
    def _stream_prepared(self, prepared: Sequence[PreparedRequest]) -> Iterator[StreamDelta | GenerationResult]:
        """Deltas while generating, each result when its request ends."""

    @abstractmethod
    def _generate_all(self, prepared: Sequence[PreparedRequest], sink: DeltaSink | None) -> list[GenerationResult]:
        """One result per prepared request, in order; streams to `sink` when given."""

    def count_results(self, results: Sequence[GenerationResult | None]) -> None:
        """Add results to the stats (rows ok and failed, tokens). The whole-list calls count their own; a caller
        of the step API (`add`/`step`, as AsyncEngine is) counts what it hands out."""
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
