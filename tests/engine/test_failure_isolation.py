"""One request's failure stays its own (issue 13, item 1). An exception while sampling, stopping or
detokenising one request ends that request alone with an error result, and the others in the same steps give
exactly the tokens of a clean run; a step that fails as a whole fails only the requests it ran, as
"step_failed", and the engine (and AsyncEngine's thread) keeps serving."""

import asyncio
import dataclasses

import pytest
import torch

import vlray.engine.continuous_engine as continuous_engine
import vlray.static.hf_generate_runner as hf_generate_runner
from vlray.engine.async_engine import AsyncEngine
from vlray.engine.backend import STEP_FAILED
from vlray.engine.token_stream import RequestStream
from vlray.llm import LLM

SAMPLED = {"temperature": 0.9, "top_p": 0.95}


def _requests():
    """Greedy and seeded sampled requests around a "bad" one; the sampled ones come before it, so their
    generators have drawn in a step before the bad row fails."""
    return [
        {"id": "s1", "prompt": "Tell me a story.", "seed": 7, "max_tokens": 14, **SAMPLED},
        {"id": "g1", "prompt": "Hello", "max_tokens": 10},
        {"id": "s2", "prompt": "Name three colours.", "seed": 8, "max_tokens": 12, **SAMPLED},
        {"id": "bad", "prompt": "Describe the scene.", "seed": 9, "max_tokens": 16, **SAMPLED},
        {"id": "g2", "prompt": "Why is the sky blue? " * 3, "max_tokens": 12},
    ]


@pytest.fixture()
def llm(tiny_loaded, tiny_config):
    return LLM(tiny_config.with_updates(kv_cache_bytes=16 << 20, max_batch_size=8), loaded=tiny_loaded)


@pytest.fixture()
def clean(llm):
    return {r.id: r.token_ids for r in llm.generate(_requests())}


def _check_others(results, clean):
    by_id = {r.id: r for r in results}
    assert by_id["bad"].finish_reason == "error" and by_id["bad"].error_kind == "internal"
    for request_id, tokens in clean.items():
        if request_id != "bad":
            assert by_id[request_id].ok and by_id[request_id].token_ids == tokens, request_id


def test_a_failure_while_sampling_one_request_ends_it_alone(llm, clean, monkeypatch):
    real = continuous_engine.choose
    bad_seed_generator = {}

    def choose(logits, params, generators):
        if any(g is bad_seed_generator.get("bad") for g in generators if g is not None):
            raise FloatingPointError("sampling blew up (injected)")
        return real(logits, params, generators)

    real_add = llm.backend.add

    def add(prepared):
        seq = real_add(prepared)
        if prepared.request_id == "bad":
            bad_seed_generator["bad"] = seq.payload.generator
        return seq

    monkeypatch.setattr(continuous_engine, "choose", choose)
    monkeypatch.setattr(llm.backend, "add", add)
    results = llm.generate(_requests())
    _check_others(results, clean)
    assert "sampling blew up" in {r.id: r for r in results}["bad"].error


def test_a_failure_while_stopping_or_detokenising_one_request_ends_it_alone(llm, clean, monkeypatch):
    real = RequestStream.push

    def push(self, token_ids, logprobs=None):
        if self.request_id == "bad" and len(self.token_ids) >= 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        return real(self, token_ids)

    monkeypatch.setattr(RequestStream, "push", push)
    deltas = []
    prepared = [llm.preprocessor.prepare(r) for r in _requests()]
    results = llm.generate_prepared(prepared, sink=deltas.append)
    _check_others(results, clean)
    assert not [d for d in deltas if d.request_id == "bad" and d.is_final]
    monkeypatch.setattr(RequestStream, "push", real)
    assert llm.generate(_requests())[3].token_ids == clean["bad"]  # the engine serves on, the bad one too


def test_a_step_that_fails_as_a_whole_fails_only_its_requests(llm, clean, monkeypatch):
    engine = llm.backend
    prepared = {p.request_id: p for p in (llm.preprocessor.prepare(r) for r in _requests())}
    first = engine.add(prepared["g1"])
    engine.step()  # g1 prefilled; it decodes in the failing step
    engine.add(prepared["bad"])
    real = engine.runner.prefill_runner.run

    def prefill(seq, request, features):
        if request.request_id == "bad":
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(seq, request, features)

    monkeypatch.setattr(engine.runner.prefill_runner, "run", prefill)
    failed = engine.step()
    assert {r.id for _, r in failed} == {"g1", "bad"}
    assert all(r.error_kind == STEP_FAILED and "out of memory" in r.error for _, r in failed)
    assert first.status.name == "FINISHED" and not engine.has_unfinished()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks  # nothing leaked
    monkeypatch.setattr(engine.runner.prefill_runner, "run", real)
    again = llm.generate(_requests())
    assert {r.id: r.token_ids for r in again} == clean


def test_static_batches_isolate_one_request_too(tiny_loaded, tiny_config, monkeypatch):
    llm = LLM(tiny_config.with_updates(backend="hf", max_batch_size=8), loaded=tiny_loaded)
    clean = {r.id: r.token_ids for r in llm.generate(_requests())}
    real = hf_generate_runner.finish_sequence

    def finish_sequence(row, params, *args):
        if params.seed == 9:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        return real(row, params, *args)

    monkeypatch.setattr(hf_generate_runner, "finish_sequence", finish_sequence)
    _check_others(llm.generate(_requests()), clean)


def test_async_engine_survives_a_request_that_raises_and_a_failed_step(llm, clean, monkeypatch):
    server = AsyncEngine(llm.backend, llm.stats, llm.config.max_batch_size)
    prepared = [llm.preprocessor.prepare(r) for r in _requests()]
    # Adding a request raises (as torch.Generator.manual_seed did for seeds past 2**64 before the boundary
    # reduced them): that request fails alone and the engine's thread lives on.
    real_add, real_step = llm.backend.add, llm.backend.step

    def add_failing_for_bad(request, *args, **kwargs):
        if request.request_id == "bad-add":
            raise RuntimeError("seed must be within the range of uint64 (injected)")
        return real_add(request, *args, **kwargs)

    bad_add = dataclasses.replace(prepared[3], request_id="bad-add")
    calls = {"n": 0}

    def step_failing_once(sink=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug in a step (injected)")
        return real_step(sink)

    async def main():
        monkeypatch.setattr(llm.backend, "add", add_failing_for_bad)
        assert (await server.generate(bad_add)).error_kind == "internal"
        monkeypatch.setattr(llm.backend, "add", real_add)
        monkeypatch.setattr(llm.backend, "step", step_failing_once)
        failed = await server.generate(prepared[1])
        monkeypatch.setattr(llm.backend, "step", real_step)
        return failed, await asyncio.gather(*(server.generate(p) for p in prepared))

    failed, results = asyncio.run(main())
    assert server.is_alive
    server.close()
    assert failed.error_kind == STEP_FAILED
    assert {r.id: r.token_ids for r in results} == clean
