"""Requests in, results out, in order: preprocess each, bucket by kind and length, generate batch by batch.

This is the engine a ModelWorker holds. A bad request becomes an error result; a batch that fails as a whole
(out of memory, say) is retried one request at a time so that only the requests that fail alone fail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from engine.bucketing import BatchItem, plan_batches
from engine.cache_keys import BlobCache, processor_settings
from engine.config import EngineConfig
from engine.hf_generate_runner import HFGenerateRunner
from engine.model_batch import ModelBatch, collate
from engine.model_loader import LoadedModel, load_model
from engine.prepared_request import PreparedRequest
from engine.request import GenerationRequest, GenerationResult, RequestError, request_id_of
from engine.request_preprocessor import RequestPreprocessor
from engine.stats import PipelineStats
from engine.tiered_store import open_store
from engine.vision_encoder import VisionEncoder, to_mm_encoder_outputs
from engine.vision_encoder_cache import CachedVisionEncoder

log = logging.getLogger(__name__)


class BatchGenerator:
    """Static batching over transformers `generate`, with per-request errors and stage statistics."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig, bucket: bool = True,
                 cache: BlobCache | None = None) -> None:
        """`cache`: where preprocessed images and encoder outputs go (a CacheActor's client, say); None opens a
        local TieredStore as the config says, when the config caches either."""
        self.loaded = loaded
        self.config = config
        self.bucket = bucket
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
        self.runner = HFGenerateRunner(
            loaded.model, loaded.tokenizer, loaded.profile, loaded.eos_token_ids, loaded.pad_token_id)
        self.stats = PipelineStats()

    @classmethod
    def from_config(cls, config: EngineConfig, cache: BlobCache | None = None) -> "BatchGenerator":
        """Load the model the config names and wrap it."""
        start = time.perf_counter()
        generator = cls(load_model(config), config, cache=cache)
        generator.stats.stage_seconds["load"] += time.perf_counter() - start
        return generator

    def generate(self, requests: Sequence[GenerationRequest | dict[str, Any]]) -> list[GenerationResult]:
        """One result per request, in the order given."""
        start = time.perf_counter()
        results: list[GenerationResult | None] = [None] * len(requests)
        prepared: list[PreparedRequest] = []
        where: list[int] = []
        image_cache = self.preprocessor.image_cache
        hits_before = image_cache.num_hits if image_cache else 0
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
        self.stats.num_preprocessed_cache_hits += (image_cache.num_hits if image_cache else 0) - hits_before
        for i, result in zip(where, self._generate_all(prepared)):
            results[i] = result
        self._count(results)
        self.stats.wall_seconds += time.perf_counter() - start
        return results  # type: ignore[return-value]

    def generate_prepared(self, prepared: Sequence[PreparedRequest]) -> list[GenerationResult]:
        """Generate for already preprocessed requests (the batch job preprocesses on other actors)."""
        start = time.perf_counter()
        results = self._generate_all(prepared)
        self._count(results)
        self.stats.wall_seconds += time.perf_counter() - start
        return results

    def _generate_all(self, prepared: Sequence[PreparedRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(prepared)
        items = [BatchItem(i, p.kind, p.num_prompt_tokens, p.sampling.max_tokens) for i, p in enumerate(prepared)]
        for batch_items in plan_batches(items, self.config.max_batch_tokens, self.config.max_batch_size,
                                        bucket=self.bucket):
            indices = [item.index for item in batch_items]
            for i, result in zip(indices, self._run_batch([prepared[i] for i in indices])):
                results[i] = result
        return results  # type: ignore[return-value]

    def _run_batch(self, batch_requests: list[PreparedRequest]) -> list[GenerationResult]:
        try:
            return self._generate_batch(batch_requests)
        except Exception as exc:
            if len(batch_requests) == 1:
                log.exception("generation failed for request %s", batch_requests[0].request_id)
                return [GenerationResult.failed(batch_requests[0].request_id, f"internal error: {exc}",
                                                batch_requests[0].num_prompt_tokens)]
            log.warning("batch of %d failed (%s); retrying one request at a time", len(batch_requests), exc)
            return [result for req in batch_requests for result in self._run_batch([req])]

    def _generate_batch(self, batch_requests: list[PreparedRequest]) -> list[GenerationResult]:
        stats = self.stats
        with stats.stage("transfer"):
            batch = collate(batch_requests, self.loaded.pad_token_id)
        if batch.image_grid_thw is not None:
            self._encode_images(batch, batch_requests)
        with stats.stage("transfer"):
            on_device = self.runner.transfer(batch)
        with stats.stage("compute"):
            sequences = self.runner.generate(on_device, batch_requests)
        stats.num_batches += 1
        stats.num_batch_prompt_slots += batch.num_rows * batch.prompt_len
        stats.num_padding_tokens += batch.num_padding_tokens
        with stats.stage("postprocess"):
            return [
                GenerationResult(
                    id=req.request_id, text=seq.text, finish_reason=seq.finish_reason,
                    num_prompt_tokens=req.num_prompt_tokens, num_generated_tokens=len(seq.token_ids),
                    token_ids=seq.token_ids)
                for req, seq in zip(batch_requests, sequences)
            ]

    def _encode_images(self, batch: ModelBatch, batch_requests: list[PreparedRequest]) -> None:
        """Encoder outputs from the cache, the misses encoded in one call; without a cache, generate encodes all."""
        stats = self.stats
        num_images = int(batch.image_grid_thw.shape[0])
        stats.num_images += num_images
        if self.encoder_cache is None:
            stats.num_images_encoded += num_images
            stats.num_encoder_calls += 1
            return
        calls, images = self.vision_encoder.num_calls, self.vision_encoder.num_images
        with stats.stage("encode"):
            hashes = [h for r in batch_requests for h in r.image_hashes]
            features = self.encoder_cache.encode(batch.pixel_values, batch.image_grid_thw, hashes)
        batch.pixel_values = None
        batch.mm_encoder_outputs = to_mm_encoder_outputs(features)
        stats.num_encoder_calls += self.vision_encoder.num_calls - calls
        stats.num_images_encoded += self.vision_encoder.num_images - images

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
