"""Static batching through transformers `generate`: bucket by kind and length, generate batch by batch.

The reference path (`EngineConfig(backend="hf")`): every optimised path must give its greedy tokens. A batch
that fails as a whole (out of memory, say) is retried one request at a time so that only the requests that
fail alone fail.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence

from vlray.cache.keys import BlobCache
from vlray.config import EngineConfig
from vlray.engine.bucketing import BatchItem, plan_batches
from vlray.engine.generator_base import GeneratorBase
from vlray.engine.token_stream import DeltaSink, StreamDelta
from vlray.inputs.prepared_request import PreparedRequest
from vlray.model.loader import LoadedModel
from vlray.model.vision_encoder import to_mm_encoder_outputs
from vlray.schema import GenerationResult
from vlray.static.hf_generate_runner import HFGenerateRunner
from vlray.static.model_batch import collate

log = logging.getLogger(__name__)


class BatchGenerator(GeneratorBase):
    """Static batching over transformers `generate`, with per-request errors and stage statistics."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig, bucket: bool = True,
                 cache: BlobCache | None = None) -> None:
        super().__init__(loaded, config, cache)
        self.bucket = bucket
        self.runner = HFGenerateRunner(
            loaded.model, loaded.tokenizer, loaded.profile, loaded.eos_token_ids, loaded.pad_token_id)

    def _generate_all(self, prepared: Sequence[PreparedRequest],
                      sink: DeltaSink | None = None) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(prepared)
        for indices in self._planned_batches(prepared):
            for i, result in zip(indices, self._run_batch([prepared[i] for i in indices], sink)):
                results[i] = result
        return results  # type: ignore[return-value]

    def _stream_prepared(self, prepared: Sequence[PreparedRequest]) -> Iterator[StreamDelta | GenerationResult]:
        """Each batch runs on a helper thread (generate blocks until a batch ends); its deltas come out here
        as they are made, and its results when the batch ends."""
        for indices in self._planned_batches(prepared):
            events: queue.Queue = queue.Queue()
            batch = [prepared[i] for i in indices]
            worker = threading.Thread(target=lambda: events.put(self._run_batch(batch, events.put)), daemon=True)
            worker.start()
            while not isinstance(event := events.get(), list):
                yield event
            worker.join()
            yield from event

    def _planned_batches(self, prepared: Sequence[PreparedRequest]) -> Iterator[list[int]]:
        """Indices of each model batch: by kind and length within the token budget (or in input order)."""
        items = [BatchItem(i, p.kind, p.num_prompt_tokens, p.sampling.max_tokens) for i, p in enumerate(prepared)]
        for batch in plan_batches(items, self.config.max_batch_tokens, self.config.max_batch_size, self.bucket):
            yield [item.index for item in batch]

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
        if on_device.pixel_values is not None:
            # Encoded ahead (through the cache when there is one) and handed to generate as mm_encoder_outputs.
            hashes = [h for r in batch_requests for h in r.image_hashes]
            features = self.encode_images(on_device.pixel_values, on_device.image_grid_thw, hashes)
            on_device.pixel_values = None
            on_device.mm_encoder_outputs = to_mm_encoder_outputs(features)
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
