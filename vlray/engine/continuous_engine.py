"""The continuous-batching engine: iteration-level scheduling over a preallocated, paged KV cache.

Its step is nano-vllm's, with vLLM's data at the boundaries:
`SchedulerOutput = scheduler.schedule()` -> `ModelRunnerOutput = runner.run(it)` -> `postprocess(it)`.
The scheduler picks which sequences prefill (through transformers' Qwen3-VL forward, so vision and 3-D
positions stay exact) and which decode one token (the fast path); postprocess samples every sequence's next
token (vlray/engine/sampling/sampler.py: penalties over each request's token counts, kept on the device, then the
filters and a seeded draw; logprobs of the raw logits where asked), each request's RequestStream turns tokens
into text deltas and decides when it ends (EOS, max_tokens, stop strings), and a finished request leaves the
batch at once.

Failures stay where they happen: an exception while sampling, stopping or detokenising one request ends that
request alone with an error result; a step that fails as a whole (an out-of-memory on a prefill, say) ends the
requests it was running, with error_kind "step_failed", and the engine goes on with the rest.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from vlray.config import EngineConfig
from vlray.engine.backend import STEP_FAILED, failed_result
from vlray.engine.block_manager import BlockManager
from vlray.engine.image_encoder import ImageEncoder
from vlray.engine.kv_cache import DEFAULT_CPU_KV_CACHE_BYTES, KVCache, KVCacheShape, blocks_for_sides, kv_cache_budget
from vlray.engine.runner.model_runner import ModelRunner, ModelRunnerOutput
from vlray.engine.sampling.sampler import StepLogprobs, TokenCounts, apply_penalties, choose, make_generator
from vlray.engine.scheduler import Scheduler
from vlray.engine.sequence import ImageSpan, Sequence
from vlray.engine.token_stream import DeltaSink, RequestStream
from vlray.inputs.prepared_request import PreparedRequest
from vlray.model.loader import LoadedModel
from vlray.schema import GenerationResult, RequestError, TokenLogprob
from vlray.stats import PipelineStats

if TYPE_CHECKING:  # xgrammar takes a second to import: only an engine that meets a grammar request pays for it
    from vlray.engine.sampling.structured_output import GrammarCompiler, GrammarState

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _RequestState:
    """The engine's side of a sequence (its payload)."""

    prepared: PreparedRequest
    stream: RequestStream
    generator: torch.Generator | None
    counts: TokenCounts | None = None  # on the device, from its first sampled step, when it has penalties
    grammar: GrammarState | None = None  # when its sampling asks for structured output


class ContinuousBatchingEngine:
    """Requests join and leave the running batch at every step; the greedy tokens of plain `generate`."""

    waits_for_batch = False  # a newcomer joins the running batch at the next step

    def __init__(self, loaded: LoadedModel, config: EngineConfig, encoder: ImageEncoder,
                 stats: PipelineStats) -> None:
        profile = loaded.profile
        self.config = config
        self.stats = stats
        text = loaded.model.config.text_config
        shape = KVCacheShape(text.num_hidden_layers, text.num_key_value_heads, text.head_dim, config.block_size)
        seats_full = (config.max_batch_size + 1) * loaded.max_model_len * shape.bytes_per_token(profile.dtype)
        budget = kv_cache_budget(profile, config.kv_cache_bytes, config.kv_cache_memory_fraction, seats_full)
        # Each layer's K/V beside it; a split on CUDA sizes the GPU's layers by its free memory, the CPU's by RAM.
        placement = loaded.placement
        sides = [(side.device, side.dtype) for side in map(placement.layer_side, range(shape.num_layers))]
        split_on_cuda = placement.is_split and profile.is_cuda and config.kv_cache_bytes is None
        cpu_budget = min(DEFAULT_CPU_KV_CACHE_BYTES, seats_full) if split_on_cuda else None
        self.kv_cache = KVCache(shape, blocks_for_sides(shape, sides, budget, cpu_budget), profile.dtype,
                                profile.device, sides)
        self.block_manager = BlockManager(self.kv_cache.usable_block_ids, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_batch_size, config.max_batch_tokens)
        self.runner = ModelRunner(loaded, config, self.kv_cache, self.block_manager, encoder, stats)
        self.device = torch.device(profile.device)
        self.eos_token_ids = set(loaded.eos_token_ids)
        self.tokenizer = loaded.tokenizer
        self.vocab_size = text.vocab_size
        self._grammar_compiler: GrammarCompiler | None = None  # built when a request first asks for a grammar
        self._seq_ids = itertools.count()
        log.info("KV cache: %d blocks of %d tokens (%.1f MiB)", self.kv_cache.num_blocks, config.block_size,
                 self.kv_cache.num_bytes / 2**20)

    def add(self, prepared: PreparedRequest) -> Sequence:
        """Queue a request; RequestError when the KV cache could never hold it."""
        seq = Sequence(next(self._seq_ids), prepared.input_ids.tolist(), prepared.sampling.max_tokens,
                       _image_spans(prepared), prefix_group=prepared.prefix_group)
        stream = RequestStream(prepared.request_id, prepared.sampling, prepared.num_prompt_tokens,
                               self.eos_token_ids, self._decode_text)
        seq.payload = _RequestState(prepared, stream, make_generator(prepared.sampling, self.device),
                                    grammar=self._grammar_for(prepared))
        try:
            self.scheduler.add(seq)
        except ValueError as exc:
            raise RequestError(f"{exc}: lower max_tokens or give the engine a larger KV cache (kv_cache_bytes)",
                               kind="kv_cache_too_small") from None
        self.runner.add_request(seq.seq_id, prepared)
        return seq

    def _grammar_for(self, prepared: PreparedRequest) -> GrammarState | None:
        """The request's grammar state (RequestError naming response_format when its schema cannot be used)."""
        spec = prepared.sampling.structured
        if spec is None:
            return None
        if self._grammar_compiler is None:
            from vlray.engine.sampling.structured_output import GrammarCompiler

            self._grammar_compiler = GrammarCompiler(self.tokenizer, self.vocab_size, self.eos_token_ids)
        return self._grammar_compiler.matcher(spec)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def room(self) -> int:
        return max(0, self.config.max_batch_size - len(self.scheduler.running) - len(self.scheduler.waiting))

    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def abort(self, seq: Sequence) -> None:
        """Drop a request (its caller went away)."""
        self._finish(seq)

    def step(self, sink: DeltaSink | None = None) -> list[tuple[Sequence, GenerationResult]]:
        """schedule -> run -> postprocess; the requests that ended in this step, with their results."""
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            if self.scheduler.has_unfinished():
                raise RuntimeError("the scheduler could not run any waiting request (KV cache accounting bug)")
            return []
        self.stats.num_batches += 1
        self.stats.num_preemptions += len(scheduled.preempted)
        try:
            output = self.runner.run(scheduled)
        except Exception as exc:  # out of memory, a kernel error: the step's requests fail, the engine goes on
            log.exception("an engine step failed with %d requests in it", len(scheduled.prefills + scheduled.decodes))
            return [self._fail(seq, exc, STEP_FAILED) for seq in scheduled.prefills + scheduled.decodes]
        with self.stats.stage("postprocess"):
            finished = self._postprocess(output, sink)
        self.runner.prefetch(self.scheduler.waiting)
        return finished

    def _postprocess(self, output: ModelRunnerOutput, sink: DeltaSink | None
                     ) -> list[tuple[Sequence, GenerationResult]]:
        """Sample, append, stream; a request whose sampling, stop check or detokenising raises ends alone."""
        finished = []
        tokens, logprobs = self._sample(output)
        for seq, token, logprob in zip(output.seqs, tokens, logprobs):
            state: _RequestState = seq.payload
            try:
                if isinstance(token, Exception):
                    raise token
                seq.num_computed_tokens = len(seq)
                seq.append_token(token)
                if state.counts is not None:
                    state.counts.add(token)
                if state.grammar is not None:
                    state.grammar.accept(token)
                delta = state.stream.push([token], None if logprob is None else [logprob])
            except Exception as exc:
                log.exception("request %s failed in postprocess", state.prepared.request_id)
                finished.append(self._fail(seq, exc))
                continue
            if delta is not None and sink is not None:
                sink(delta)
            if state.stream.is_finished:
                self._finish(seq)
                finished.append((seq, self._result(seq, state)))
            else:
                self.block_manager.commit_computed(seq)
        return finished

    def _sample(self, output: ModelRunnerOutput) -> tuple[list[int | Exception], list[TokenLogprob | None]]:
        """One token per row (one host sync for the batch), and its logprob where asked; when that raises, row
        by row, each from the generator state it had, so the rows that do not fail draw exactly what they would
        have drawn."""
        states: list[_RequestState] = [seq.payload for seq in output.seqs]
        generators = [s.generator for s in states]
        saved = [g.get_state() if g is not None else None for g in generators] if any(generators) else None
        try:
            return self._sample_rows(output.logits, output.seqs)
        except Exception:
            log.exception("sampling a batch of %d failed; sampling row by row", len(states))
        tokens: list[int | Exception] = []
        logprobs: list[TokenLogprob | None] = []
        for row, (state, generator) in enumerate(zip(states, generators)):
            if generator is not None and saved is not None:
                generator.set_state(saved[row])
            try:
                token, logprob = self._sample_rows(output.logits[row:row + 1], output.seqs[row:row + 1])
                tokens += token
                logprobs += logprob
            except Exception as exc:
                tokens.append(exc)
                logprobs.append(None)
        return tokens, logprobs

    def _sample_rows(self, logits: torch.Tensor, seqs: list[Sequence]
                     ) -> tuple[list[int | Exception], list[TokenLogprob | None]]:
        states: list[_RequestState] = [seq.payload for seq in seqs]
        params = [s.prepared.sampling for s in states]
        for seq, state, p in zip(seqs, states, params):
            if p.has_penalties and state.counts is None:  # from its first sampled step on, kept on the device
                state.counts = TokenCounts(seq.token_ids, seq.num_prompt_tokens, logits.shape[-1], self.device,
                                           with_seen=p.repetition_penalty != 1.0)
        logprobs = StepLogprobs(logits, params)  # of the raw logits: taken before anything changes them
        raw = logits
        logits = apply_penalties(logits, params, [s.counts for s in states])
        grammars = [s.grammar for s in states]
        if any(g is not None for g in grammars):
            # After the penalties, before the draw; on a copy, so a retry row by row starts from the raw logits.
            from vlray.engine.sampling.structured_output import apply_grammar

            logits = logits.clone() if logits.data_ptr() == raw.data_ptr() else logits
            apply_grammar(logits, grammars)
        chosen = choose(logits, params, [s.generator for s in states])
        return chosen.tolist(), logprobs.resolve(chosen)

    def _fail(self, seq: Sequence, error: Exception, kind: str | None = None) -> tuple[Sequence, GenerationResult]:
        self._finish(seq)
        return seq, failed_result(seq.payload.prepared, error, kind)

    def _finish(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        self.runner.release(seq.seq_id)

    def _result(self, seq: Sequence, state: _RequestState) -> GenerationResult:
        output = state.stream.result
        return GenerationResult(id=state.prepared.request_id, text=output.text, finish_reason=output.finish_reason,
                                num_prompt_tokens=seq.num_prompt_tokens, num_generated_tokens=len(output.token_ids),
                                token_ids=output.token_ids, logprobs=state.stream.logprobs)

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _image_spans(prepared: PreparedRequest) -> list[ImageSpan]:
    """Token ranges of the request's images (runs of mm_token_type_ids == 1), with their content hashes."""
    if prepared.mm_token_type_ids is None:
        return []
    marks = np.concatenate([[0], prepared.mm_token_type_ids != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(marks))
    starts, ends = edges[0::2], edges[1::2]
    return [ImageSpan(int(s), int(e), h) for s, e, h in zip(starts, ends, prepared.image_hashes)]
