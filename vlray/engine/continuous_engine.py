"""The continuous-batching engine: iteration-level scheduling over a preallocated, paged KV cache.

Each step the scheduler picks which sequences prefill (through transformers' Qwen3-VL forward, so vision and
3-D positions stay exact) and which decode one token (the fast path); the sampler picks every sequence's next
token, each request's RequestStream turns tokens into text deltas and decides when it ends (EOS, max_tokens,
stop strings), and a finished request leaves the batch at once. The step loop is nano-vllm's:
`schedule -> run -> postprocess`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np
import torch

from vlray.cache.keys import BlobCache
from vlray.config import EngineConfig
from vlray.engine.block_manager import BlockManager
from vlray.engine.generator_base import GeneratorBase
from vlray.engine.kv_cache import KVCache, KVCacheShape, kv_cache_budget
from vlray.engine.runner.cuda_graphs import CudaGraphDecoder
from vlray.engine.runner.decode import DecodeRunner, best_split
from vlray.engine.runner.pixel_prefetcher import PixelPrefetcher
from vlray.engine.runner.prefill import PrefillRunner, image_patches, images_to_encode
from vlray.engine.sampler import make_generator, sample
from vlray.engine.scheduler import ScheduledStep, Scheduler
from vlray.engine.sequence import ImageSpan, Sequence
from vlray.engine.token_stream import DeltaSink, RequestStream, StreamDelta
from vlray.inputs.prepared_request import PreparedRequest
from vlray.model.device_profile import attention_kernels
from vlray.model.loader import LoadedModel
from vlray.model.vision_encoder import ImageFeatures
from vlray.schema import GenerationResult, RequestError

log = logging.getLogger(__name__)

# Decode CUDA graphs cover contexts up to this many tokens; longer ones run eagerly.
CUDA_GRAPH_MAX_CONTEXT = 8192
# Requests whose pixels are uploaded ahead of their prefill.
PREFETCH_AHEAD = 4


@dataclass(eq=False)
class _RequestState:
    """The engine's side of a sequence (its payload)."""

    prepared: PreparedRequest
    stream: RequestStream
    generator: torch.Generator | None
    rope_delta: int = 0


class ContinuousBatchingEngine(GeneratorBase):
    """Requests join and leave the running batch at every step; same results as `generate`, faster."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig, cache: BlobCache | None = None) -> None:
        super().__init__(loaded, config, cache)
        profile = loaded.profile
        text = loaded.model.config.text_config
        shape = KVCacheShape(text.num_hidden_layers, text.num_key_value_heads, text.head_dim, config.block_size)
        seats_full = (config.max_batch_size + 1) * loaded.max_model_len * shape.bytes_per_token(profile.dtype)
        budget = kv_cache_budget(profile, config.kv_cache_bytes, config.kv_cache_memory_fraction, seats_full)
        self.kv_cache = KVCache(shape, shape.blocks_for_budget(budget, profile.dtype), profile.dtype, profile.device)
        self.block_manager = BlockManager(self.kv_cache.usable_block_ids, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_batch_size, config.max_batch_tokens)
        self.prefill_runner = PrefillRunner(loaded.model, self.kv_cache, profile.device)
        decoder = DecodeRunner(loaded.model, self.kv_cache)
        self.decode = decoder.forward
        self.graphed = profile.is_cuda and config.cuda_graphs
        if self.graphed:
            self.decode = CudaGraphDecoder(decoder.forward, config.max_batch_size,
                                           CUDA_GRAPH_MAX_CONTEXT // config.block_size, profile.device)
        self.prefetcher = PixelPrefetcher(profile.device, profile.dtype)
        self.device = torch.device(profile.device)
        self.eos_token_ids = set(loaded.eos_token_ids)
        self._seq_ids = itertools.count()
        log.info("KV cache: %d blocks of %d tokens (%.1f MiB)", self.kv_cache.num_blocks, config.block_size,
                 self.kv_cache.num_bytes / 2**20)

    # -- the step API ---------------------------------------------------------------------------------------

    def add(self, prepared: PreparedRequest) -> Sequence:
        """Queue a request; RequestError when the KV cache could never hold it."""
        spans = _image_spans(prepared)
        seq = Sequence(next(self._seq_ids), prepared.input_ids.tolist(), prepared.sampling.max_tokens, spans)
        seq.payload = _RequestState(
            prepared,
            RequestStream(prepared.request_id, prepared.sampling, prepared.num_prompt_tokens, self.eos_token_ids,
                          self._decode_text),
            make_generator(prepared.sampling, self.device))
        try:
            self.scheduler.add(seq)
        except ValueError as exc:
            raise RequestError(f"{exc}: lower max_tokens or give the engine a larger KV cache (kv_cache_bytes)",
                               kind="kv_cache_too_small") from None
        return seq

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def abort(self, seq: Sequence) -> None:
        """Drop a request (its caller went away)."""
        self.scheduler.finish(seq)
        self.prefetcher.drop(seq.seq_id)

    def step(self, sink: DeltaSink | None = None) -> list[tuple[Sequence, GenerationResult]]:
        """One iteration: prefill newcomers, decode the running, sample; the requests that ended, with results."""
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            if self.scheduler.has_unfinished():
                raise RuntimeError("the scheduler could not run any waiting request (KV cache accounting bug)")
            return []
        self.stats.num_batches += 1
        self.stats.num_preemptions += len(scheduled.preempted)
        with self.stats.stage("transfer"):
            encode = {seq.seq_id: images_to_encode(seq) for seq in scheduled.prefills}
            pixels = {seq.seq_id: self.prefetcher.take(seq.seq_id, seq.payload.prepared.pixel_values)
                      for seq in scheduled.prefills if encode[seq.seq_id]}
            if not self.graphed:
                scheduled.decodes.sort(key=len)  # for grouped attention (best_split); graphs take any order
            decode_inputs = self._decode_inputs(scheduled.decodes) if scheduled.decodes else None
        features = self._encode_prefill_images(scheduled.prefills, encode, pixels)
        with self.stats.stage("compute"), attention_kernels(self.loaded.profile), torch.inference_mode():
            logits = self._run(scheduled, features, decode_inputs)
        with self.stats.stage("postprocess"):
            finished = self._postprocess(scheduled.prefills + scheduled.decodes, logits, sink)
        self._prefetch_waiting()
        return finished

    # -- the whole-list API (GeneratorBase) -----------------------------------------------------------------

    def _generate_all(self, prepared: Seq[PreparedRequest], sink: DeltaSink | None) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(prepared)
        where: dict[int, int] = {}
        for index, request in enumerate(prepared):
            try:
                where[self.add(request).seq_id] = index
            except RequestError as exc:
                results[index] = GenerationResult.failed(request.request_id, exc, request.num_prompt_tokens)
        while self.has_unfinished():
            for seq, result in self.step(sink):
                if seq.seq_id in where:
                    results[where[seq.seq_id]] = result
        return results  # type: ignore[return-value]

    def _stream_prepared(self, prepared: Seq[PreparedRequest]) -> Iterator[StreamDelta | GenerationResult]:
        for request in prepared:
            try:
                self.add(request)
            except RequestError as exc:
                yield GenerationResult.failed(request.request_id, exc, request.num_prompt_tokens)
        while self.has_unfinished():
            deltas: list[StreamDelta] = []
            finished = self.step(deltas.append)
            yield from deltas
            yield from (result for _, result in finished)

    # -- internals --------------------------------------------------------------------------------------------

    def _encode_prefill_images(self, prefills: list[Sequence], encode: dict[int, list[int]],
                               pixels: dict[int, torch.Tensor]) -> dict[int, list[ImageFeatures]]:
        """Vision-encoder outputs of every image this step's prefills need, in one packed call (through the
        encoder cache when there is one), split back per sequence."""
        wanted = [(seq, image) for seq in prefills for image in encode[seq.seq_id]]
        if not wanted:
            return {}
        parts, grids, hashes = [], [], []
        for seq in prefills:
            images = encode[seq.seq_id]
            if images:
                prepared = seq.payload.prepared
                patches, grid = image_patches(prepared, pixels[seq.seq_id], images)
                parts.append(patches)
                grids.append(grid)
                hashes += [prepared.image_hashes[i] for i in images]
        features = iter(self.encode_images(torch.cat(parts), torch.cat(grids), hashes))
        by_seq: dict[int, list[ImageFeatures]] = {}
        for seq, _ in wanted:
            by_seq.setdefault(seq.seq_id, []).append(next(features))
        return by_seq

    def _run(self, scheduled: ScheduledStep, features: dict[int, list[ImageFeatures]],
             decode_inputs: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        """Next-token logits [prefills + decodes, V] (float32)."""
        rows = []
        for seq in scheduled.prefills:
            state: _RequestState = seq.payload
            self.stats.num_prefix_cached_tokens += seq.num_cached_tokens
            self.stats.num_batch_prompt_slots += len(seq) - seq.num_cached_tokens
            result = self.prefill_runner.run(seq, state.prepared, features.get(seq.seq_id))
            state.rope_delta = result.rope_delta
            rows.append(result.logits.unsqueeze(0))
        if decode_inputs is not None:
            if self.graphed:
                rows.append(self.decode(*decode_inputs))
            else:
                blocks = [len(seq.block_table) for seq in scheduled.decodes]
                rows.append(self.decode(*decode_inputs, split_at=best_split(blocks)))
        return torch.cat(rows)

    def _decode_inputs(self, seqs: list[Sequence]) -> tuple[torch.Tensor, ...]:
        """Each sequence's last token, its 3-D rotary position, its cache slot, block table and length."""
        manager = self.block_manager
        width = max(len(s.block_table) for s in seqs)
        tables = np.zeros((len(seqs), width), dtype=np.int64)  # padding points at the scratch block
        for row, seq in enumerate(seqs):
            tables[row, : len(seq.block_table)] = seq.block_table
        host = [
            torch.tensor([s.last_token_id for s in seqs]),
            torch.tensor([len(s) - 1 + s.payload.rope_delta for s in seqs]),
            torch.tensor([manager.slot(s, len(s) - 1) for s in seqs]),
            torch.from_numpy(tables),
            torch.tensor([len(s) for s in seqs]),
        ]
        pin = self.device.type == "cuda"
        return tuple((t.pin_memory() if pin else t).to(self.device, non_blocking=pin) for t in host)

    def _postprocess(self, seqs: list[Sequence], logits: torch.Tensor,
                     sink: DeltaSink | None) -> list[tuple[Sequence, GenerationResult]]:
        states: list[_RequestState] = [s.payload for s in seqs]
        tokens = sample(logits, [s.prepared.sampling for s in states], [s.generator for s in states])
        finished = []
        for seq, state, token in zip(seqs, states, tokens):
            seq.num_computed_tokens = len(seq)
            seq.append_token(token)
            delta = state.stream.push([token])
            if delta is not None and sink is not None:
                sink(delta)
            if state.stream.is_finished:
                self.scheduler.finish(seq)
                finished.append((seq, self._result(seq, state)))
            else:
                self.block_manager.commit_computed(seq)
        return finished

    def _result(self, seq: Sequence, state: _RequestState) -> GenerationResult:
        output = state.stream.result
        return GenerationResult(id=state.prepared.request_id, text=output.text, finish_reason=output.finish_reason,
                                num_prompt_tokens=seq.num_prompt_tokens, num_generated_tokens=len(output.token_ids),
                                token_ids=output.token_ids)

    def _prefetch_waiting(self) -> None:
        for seq in itertools.islice(self.scheduler.waiting, PREFETCH_AHEAD):
            pixels = seq.payload.prepared.pixel_values
            if pixels is not None:
                self.prefetcher.prefetch(seq.seq_id, pixels)

    def _decode_text(self, ids: list[int]) -> str:
        return self.loaded.tokenizer.decode(ids, skip_special_tokens=True)


def _image_spans(prepared: PreparedRequest) -> list[ImageSpan]:
    """Token ranges of the request's images (runs of mm_token_type_ids == 1), with their content hashes."""
    if prepared.mm_token_type_ids is None:
        return []
    marks = np.concatenate([[0], prepared.mm_token_type_ids != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(marks))
    starts, ends = edges[0::2], edges[1::2]
    return [ImageSpan(int(s), int(e), h) for s, e, h in zip(starts, ends, prepared.image_hashes)]
