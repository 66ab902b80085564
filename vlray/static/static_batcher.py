"""The static path: bucketed batches through transformers `generate`, behind the engine's step interface.

The reference path (`EngineConfig(backend="hf")`): every optimised path must give its greedy tokens. Requests
wait here until a step takes the batch that holds the oldest of them, cut by kind and prompt length within the
token budget (bucketing.py); the step runs that batch to its end. A batch that fails as a whole (out of memory,
say) is retried one request at a time, so that only the requests that fail alone fail.

It keeps fewer sampling options than the engine, and says so: temperature, top_p, top_k, min_p, seed and the
repetition, presence and frequency penalties work as in the engine (the same functions); `logprobs`,
structured output (`response_format`) and prefix groups (n > 1 samples sharing one prefill) are refused at
`add` with a RequestError naming the field.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from vlray.config import EngineConfig
from vlray.engine.backend import failed_result
from vlray.engine.image_encoder import ImageEncoder
from vlray.engine.token_stream import DeltaSink
from vlray.inputs.prepared_request import PreparedRequest
from vlray.model.loader import LoadedModel
from vlray.model.vision_encoder import to_mm_encoder_outputs
from vlray.schema import GenerationResult, RequestError
from vlray.static.bucketing import BatchItem, plan_batches
from vlray.static.hf_generate_runner import HFGenerateRunner
from vlray.static.model_batch import collate
from vlray.stats import PipelineStats

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class StaticRequest:
    """A request waiting for its batch (the static batcher's handle)."""

    prepared: PreparedRequest


class StaticBatcher:
    """`add` requests, `step` runs one bucketed batch through `generate`; per-request errors, stage stats."""

    waits_for_batch = True  # a step runs a whole batch: give it a moment to fill

    def __init__(self, loaded: LoadedModel, config: EngineConfig, encoder: ImageEncoder,
                 stats: PipelineStats) -> None:
        """config.bucket_static_batches: group batches by kind and prompt length (False: arrival order, kinds
        mixed, the baseline bucketing is measured against)."""
        self.config = config
        self.bucket = config.bucket_static_batches
        self.encoder = encoder
        self.stats = stats
        self.pad_token_id = loaded.pad_token_id
        self.runner = HFGenerateRunner(
            loaded.model, loaded.tokenizer, loaded.profile, loaded.eos_token_ids, loaded.pad_token_id)
        self.waiting: list[StaticRequest] = []  # in arrival order

    def add(self, prepared: PreparedRequest) -> StaticRequest:
        """Queue a request; RequestError naming the field when it asks for what this path lacks."""
        refused = [name for name, asked in (
            ("logprobs", prepared.sampling.logprobs is not None),
            ("response_format", prepared.sampling.structured is not None),
            ("n", prepared.prefix_group is not None),
        ) if asked]
        if refused:
            raise RequestError(f"{', '.join(refused)}: not supported by the static path (backend hf); use the "
                               "engine backend", kind="unsupported")
        request = StaticRequest(prepared)
        self.waiting.append(request)
        return request

    def has_unfinished(self) -> bool:
        return bool(self.waiting)

    def room(self) -> int:
        return sys.maxsize  # it buckets what waits: the more it sees, the better its batches

    def num_waiting(self) -> int:
        return len(self.waiting)

    def abort(self, request: StaticRequest) -> None:
        if request in self.waiting:
            self.waiting.remove(request)

    def step(self, sink: DeltaSink | None = None) -> list[tuple[StaticRequest, GenerationResult]]:
        """Run the batch that holds the oldest waiting request (so none waits forever behind better-fitting
        newcomers) to its end."""
        if not self.waiting:
            return []
        batch = self._next_batch()
        chosen = set(map(id, batch))
        self.waiting = [r for r in self.waiting if id(r) not in chosen]
        return list(zip(batch, self._run_batch([r.prepared for r in batch], sink)))

    def _next_batch(self) -> list[StaticRequest]:
        items = [BatchItem(i, r.prepared.kind, r.prepared.num_prompt_tokens, r.prepared.sampling.max_tokens)
                 for i, r in enumerate(self.waiting)]
        batches = plan_batches(items, self.config.max_batch_tokens, self.config.max_batch_size, self.bucket)
        first = next(b for b in batches if any(item.index == 0 for item in b))
        return [self.waiting[index] for index in sorted(item.index for item in first)]  # rows in arrival order

    def _run_batch(self, requests: list[PreparedRequest], sink: DeltaSink | None) -> list[GenerationResult]:
        try:
            return self._generate_batch(requests, sink)
        except Exception as exc:
            if len(requests) == 1:
                log.exception("generation failed for request %s", requests[0].request_id)
                return [failed_result(requests[0], exc)]
            log.warning("batch of %d failed (%s); retrying one request at a time", len(requests), exc)
            return [result for request in requests for result in self._run_batch([request], sink)]

    def _generate_batch(self, requests: list[PreparedRequest], sink: DeltaSink | None) -> list[GenerationResult]:
        stats = self.stats
        with stats.stage("transfer"):
            batch = collate(requests, self.pad_token_id)
            on_device = self.runner.transfer(batch)
        if on_device.pixel_values is not None:
            # Encoded ahead (through the cache when there is one) and handed to generate as mm_encoder_outputs.
            hashes = [h for r in requests for h in r.image_hashes]
            features = self.encoder.encode(on_device.pixel_values, on_device.image_grid_thw, hashes)
            on_device.pixel_values = None
            on_device.mm_encoder_outputs = to_mm_encoder_outputs(features)
        with stats.stage("compute"):
            sequences = self.runner.generate(on_device, requests, sink=sink)
        stats.num_batches += 1
        stats.num_batch_prompt_slots += batch.num_rows * batch.prompt_len
        stats.num_padding_tokens += batch.num_padding_tokens
        with stats.stage("postprocess"):
            return [GenerationResult(
                id=req.request_id, text=seq.text, finish_reason=seq.finish_reason,
                num_prompt_tokens=req.num_prompt_tokens, num_generated_tokens=len(seq.token_ids),
                token_ids=seq.token_ids) for req, seq in zip(requests, sequences)]
