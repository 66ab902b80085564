"""AsyncEngine: concurrent callers are batched together and get the same tokens as alone; streams add up to
results; the queue is bounded; a caller that gives up leaves the queue; a retried batch does not repeat text."""

import asyncio
import threading

import pytest

from vlray.engine.async_engine import AsyncEngine, GenerationError
from vlray.engine.request_queue import QueueFullError
from vlray.llm import LLM

PROMPTS = ["Hello", "Describe the scene.", "Name three colours.", "What is in the picture?", "Count.",
           "Say something long about the city at night.", "Why?", "Read the sign."]


@pytest.fixture()
def llm(tiny_loaded, tiny_config):
    return LLM(tiny_config.with_updates(backend="hf", default_max_tokens=10), loaded=tiny_loaded)


def _prepare(llm, i: int, **extra):
    return llm.preprocessor.prepare({"id": f"r{i}", "prompt": PROMPTS[i % len(PROMPTS)], **extra})


class _Gate:
    """Holds the static batcher's first batch until released, so tests control what is queued meanwhile."""

    def __init__(self, llm, monkeypatch):
        self.entered, self.release, self.calls = threading.Event(), threading.Event(), []
        real = llm.backend._run_batch

        def gated(prepared, sink=None):
            self.calls.append([p.request_id for p in prepared])
            self.entered.set()
            self.release.wait(30)
            return real(prepared, sink)

        monkeypatch.setattr(llm.backend, "_run_batch", gated)


def _engine(llm, **kwargs) -> AsyncEngine:
    return AsyncEngine(llm.backend, llm.stats, llm.config.max_batch_size, **kwargs)


def test_concurrent_requests_batch_together_and_match_one_at_a_time(llm, monkeypatch):
    alone = [llm.generate([{"id": f"r{i}", "prompt": PROMPTS[i]}])[0] for i in range(len(PROMPTS))]
    gate = _Gate(llm, monkeypatch)
    engine = _engine(llm)

    async def main():
        first = asyncio.create_task(engine.generate(_prepare(llm, 0)))
        await asyncio.to_thread(gate.entered.wait, 30)
        rest = [asyncio.create_task(engine.generate(_prepare(llm, i))) for i in range(1, len(PROMPTS))]
        await asyncio.sleep(0.05)
        gate.release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(main())
    engine.close()
    assert [r.token_ids for r in results] == [r.token_ids for r in alone]
    assert gate.calls == [["r0"], [f"r{i}" for i in range(1, len(PROMPTS))]]


def test_streams_add_up_to_the_non_streamed_results(llm):
    engine = _engine(llm)

    async def collect(i):
        return [d async for d in engine.stream(_prepare(llm, i, stop=["e"] if i % 2 else []))]

    async def main():
        streamed = await asyncio.gather(*[collect(i) for i in range(6)])
        plain = await asyncio.gather(*[engine.generate(_prepare(llm, i, stop=["e"] if i % 2 else []))
                                       for i in range(6)])
        return streamed, plain

    streamed, plain = asyncio.run(main())
    engine.close()
    for deltas, result in zip(streamed, plain):
        assert "".join(d.text for d in deltas) == result.text
        assert deltas[-1].finish_reason == result.finish_reason
        assert deltas[-1].num_generated_tokens == result.num_generated_tokens
    assert any(r.finish_reason == "stop" for r in plain)


def test_full_queue_refuses_and_a_caller_that_gives_up_leaves_it(llm, monkeypatch):
    gate = _Gate(llm, monkeypatch)
    engine = _engine(llm, max_queued_requests=2, retry_after_s=4)

    async def main():
        running = asyncio.create_task(engine.generate(_prepare(llm, 0)))
        await asyncio.to_thread(gate.entered.wait, 30)
        waiting = [asyncio.create_task(engine.generate(_prepare(llm, i))) for i in (1, 2)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError) as info:
            await engine.generate(_prepare(llm, 3))
        assert info.value.retry_after_s == 4 and engine.num_queued == 2
        waiting[0].cancel()
        await asyncio.sleep(0.05)
        assert engine.num_queued == 1
        third = asyncio.create_task(engine.generate(_prepare(llm, 3)))  # room again
        await asyncio.sleep(0.05)
        gate.release.set()
        return await asyncio.gather(running, waiting[1], third)

    results = asyncio.run(main())
    engine.close()
    assert all(r.ok for r in results)
    assert "r1" not in [rid for call in gate.calls for rid in call]  # the cancelled request never ran


def test_a_retried_batch_does_not_repeat_streamed_text(llm, monkeypatch):
    expected = [llm.generate([{"id": f"r{i}", "prompt": PROMPTS[i]}])[0] for i in range(3)]
    real = llm.backend.runner.generate

    def fails_late(batch, batch_requests, sink=None):
        sequences = real(batch, batch_requests, sink=sink)  # streams every token, then the batch fails
        if len(batch_requests) > 1:
            raise RuntimeError("out of memory (simulated)")
        return sequences

    monkeypatch.setattr(llm.backend.runner, "generate", fails_late)
    engine = _engine(llm)

    async def main():
        async def collect(i):
            return [d async for d in engine.stream(_prepare(llm, i))]
        return await asyncio.gather(*[collect(i) for i in range(3)])

    streamed = asyncio.run(main())
    engine.close()
    for deltas, result in zip(streamed, expected):
        assert "".join(d.text for d in deltas) == result.text
        assert [d.text_offset for d in deltas] == [sum(len(d.text) for d in deltas[:k]) for k in range(len(deltas))]


def test_failures_duplicate_ids_and_close(llm, monkeypatch):
    monkeypatch.setattr(llm.backend.runner, "generate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    engine = _engine(llm)

    async def main():
        with pytest.raises(GenerationError, match="boom"):
            async for _ in engine.stream(_prepare(llm, 0)):
                pass
        result = await engine.generate(_prepare(llm, 0))
        assert result.finish_reason == "error" and "boom" in result.error
        gate = _Gate(llm, monkeypatch)
        running = asyncio.create_task(engine.generate(_prepare(llm, 1)))
        await asyncio.to_thread(gate.entered.wait, 30)
        with pytest.raises(ValueError, match="already in flight"):
            await engine.generate(_prepare(llm, 1))
        queued = asyncio.create_task(engine.generate(_prepare(llm, 2)))
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(asyncio.to_thread(engine.close))
        queued_result = await queued  # answered by close(), while the batch still runs
        gate.release.set()
        await closing
        return queued_result, await running

    queued, running = asyncio.run(main())
    assert not engine.is_alive
    assert queued.finish_reason == "error" and "shutting down" in queued.error
    assert running.finish_reason == "error" and "boom" in running.error
