"""AsyncEngine over the continuous-batching engine: a request joins the running batch at the next step (it
does not wait for the others to end), every result equals the request alone, and a caller that leaves while
its request runs frees its place in the engine."""

import asyncio

import pytest

from vlray.engine.async_engine import AsyncEngine
from vlray.llm import LLM

PROMPTS = ["Hello", "Describe the scene.", "Name three colours.", "What is in the picture?", "Count."]


@pytest.fixture()
def engine(tiny_loaded, tiny_config):
    return LLM(tiny_config.with_updates(backend="engine", kv_cache_bytes=16 << 20), loaded=tiny_loaded)


def test_late_request_joins_and_finishes_before_the_long_one(engine):
    alone = {p: engine.generate([{"id": p, "prompt": p, "max_tokens": 4}])[0].token_ids for p in PROMPTS}
    long_alone = engine.generate([{"id": "long", "prompt": "Talk.", "max_tokens": 200}])[0].token_ids
    server = AsyncEngine(engine.backend, engine.stats, engine.config.max_batch_size)
    finished_order = []

    async def run(request_id, prompt, max_tokens):
        result = await server.generate(engine.preprocessor.prepare(
            {"id": request_id, "prompt": prompt, "max_tokens": max_tokens}))
        finished_order.append(request_id)
        return result

    async def main():
        long = asyncio.create_task(run("long", "Talk.", 200))
        while server.num_running == 0:  # wait until the long request is in the engine
            await asyncio.sleep(0.005)
        short = [asyncio.create_task(run(p, p, 4)) for p in PROMPTS]
        assert not long.done()
        return await long, await asyncio.gather(*short)

    before = engine.reset_stats()
    long_result, short_results = asyncio.run(main())
    server.close()
    # The step loop counts what it hands out, as the whole-list calls do (metrics and stats read these).
    assert before.num_ok == len(PROMPTS) + 1
    assert engine.stats.num_ok == len(PROMPTS) + 1
    assert engine.stats.num_generated_tokens == len(long_result.token_ids) + sum(
        len(r.token_ids) for r in short_results)
    assert long_result.token_ids == long_alone
    assert {r.id: r.token_ids for r in short_results} == alone
    assert finished_order[-1] == "long"  # the short ones joined mid-run and left before it ended


def test_a_caller_that_leaves_frees_its_place(engine):
    server = AsyncEngine(engine.backend, engine.stats, engine.config.max_batch_size)

    async def main():
        stream = server.stream(engine.preprocessor.prepare({"id": "gone", "prompt": "Talk.", "max_tokens": 500}))
        await anext(stream)
        await stream.aclose()  # the client disconnects after its first text
        for _ in range(200):
            if not engine.backend.has_unfinished():
                return True
            await asyncio.sleep(0.01)
        return False

    assert asyncio.run(main())
    server.close()
