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
from engine.config import EngineConfig
from engine.hf_generate_runner import HFGenerateRunner
from engine.model_batch import collate
from engine.model_loader import LoadedModel, load_model
from engine.prepared_request import PreparedRequest
from engine.request import GenerationRequest, GenerationResult, RequestError, request_id_of
from engine.request_preprocessor import RequestPreprocessor
from engine.stats import PipelineStats
from engine.token_stream import DeltaSink

log = logging.getLogger(__name__)


class BatchGenerator:
    """Static batching over transformers `generate`, with per-request errors and stage statistics."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig, bucket: bool = True) -> None:
        self.loaded = loaded
        self.config = config
        self.bucket = bucket
        self.preprocessor = RequestPreprocessor(
            loaded.processor, loaded.max_model_len, config.default_max_tokens, config.max_input_pixels)
        self.runner = HFGenerateRunner(
            loaded.model, loaded.tokenizer, loaded.profile, loaded.eos_token_ids, loaded.pad_token_id)
        self.stats = PipelineStats()

    @classmethod
    def from_config(cls, config: EngineConfig, bucket: bool = True) -> "BatchGenerator":
        """Load the model the config names and wrap it (the load time counts as the `load` stage)."""
        start = time.perf_counter()
        generator = cls(load_model(config), config, bucket=bucket)
        generator.stats.stage_seconds["load"] += time.perf_counter() - start
        return generator

    def generate(self, requests: Sequence[GenerationRequest | dict[str, Any]]) -> list[GenerationResult]:
        """One result per request, in the order given."""
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
        for i, result in zip(where, self._generate_all(prepared)):
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

    def _generate_all(self, prepared: Sequence[PreparedRequest],
                      sink: DeltaSink | None = None) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(prepared)
        items = [BatchItem(i, p.kind, p.num_prompt_tokens, p.sampling.max_tokens) for i, p in enumerate(prepared)]
        for batch_items in plan_batches(items, self.config.max_batch_tokens, self.config.max_batch_size,
                                        bucket=self.bucket):
            indices = [item.index for item in batch_items]
            for i, result in zip(indices, self._run_batch([prepared[i] for i in indices], sink)):
                results[i] = result
        return results  # type: ignore[return-value]

    def _run_batch(self, batch_requests: list[PreparedRequest],
                   sink: DeltaSink | None = None) -> list[GenerationResult]:
        try:
            return self._generate_batch(batch_requests, sink)
        except Exception as exc:
            if len(batch_requests) == 1:
                log.exception("generation failed for request %s", batch_requests[0].request_id)
                return [GenerationResult.failed(batch_requests[0].request_id, f"internal error: {exc}",
                                                batch_requests[0].num_prompt_tokens)]
            log.warning("batch of %d failed (%s); retrying one request at a time", len(batch_requests), exc)
            return [result for req in batch_requests for result in self._run_batch([req], sink)]

    def _generate_batch(self, batch_requests: list[PreparedRequest],
                        sink: DeltaSink | None = None) -> list[GenerationResult]:
        stats = self.stats
        with stats.stage("transfer"):
            batch = collate(batch_requests, self.loaded.pad_token_id)
            on_device = self.runner.transfer(batch)
        with stats.stage("compute"):
            sequences = self.runner.generate(on_device, batch_requests, sink=sink)
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
