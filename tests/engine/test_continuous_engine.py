"""The continuous-batching engine gives the greedy tokens of plain `generate`, one request at a time, for every
request: mixed images and text, requests joining while others decode, preempted ones, prefix caching on or
off; and it streams, samples by seed, stops on stop strings, and refuses what its KV cache can never hold."""

import pytest
import torch

from vlray.llm import LLM
from vlray.testing.reference import reference_generate
from vlray.testing.sample_images import make_image


@pytest.fixture(scope="module")
def workload(sample_images):
    """Images of different sizes (some shared), text-only rows, a shared system prompt, output lengths 1..40."""
    system = {"role": "system", "content": "You are a careful assistant. Answer in one short sentence. " * 3}
    photo = str(sample_images[3])
    return [
        {"id": "img-small", "prompt": "What is in this image?", "images": [str(sample_images[0])], "max_tokens": 40},
        {"id": "text-short", "prompt": "Hello", "max_tokens": 3},
        {"id": "sys-1", "messages": [system, {"role": "user", "content": "Name a colour."}], "max_tokens": 25},
        {"id": "photo-q1", "prompt": "Count the shapes.", "images": [photo], "max_tokens": 12},
        {"id": "text-long", "prompt": "Describe a busy street at night with many signs. " * 5, "max_tokens": 30},
        {"id": "photo-q2", "prompt": "What colours do you see?", "images": [photo], "max_tokens": 20},
        {"id": "sys-2", "messages": [system, {"role": "user", "content": "Name an animal."}], "max_tokens": 1},
        {"id": "two-images", "prompt": "Compare.", "images": [str(sample_images[2]), str(sample_images[1])],
         "max_tokens": 16},
        {"id": "chat", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                    {"role": "user", "content": "Another?"}], "max_tokens": 9},
    ]


@pytest.fixture(scope="module")
def expected(tiny_loaded, workload):
    return {r["id"]: reference_generate(tiny_loaded, r, 12) for r in workload}


def _engine(loaded, config, **changes) -> LLM:
    """An LLM over the continuous engine (the engine itself is its `backend`)."""
    return LLM(config.with_updates(backend="engine", **changes), loaded=loaded)


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_all_at_once_equals_one_at_a_time(tiny_loaded, tiny_config, workload, expected, prefix_caching):
    engine = _engine(tiny_loaded, tiny_config, kv_cache_bytes=16 << 20, block_size=16, max_batch_size=4,
                     max_batch_tokens=600, enable_prefix_caching=prefix_caching)
    results = engine.generate(workload)
    for request, result in zip(workload, results):
        assert result.ok, result.error
        assert result.token_ids == expected[request["id"]], request["id"]
        assert result.text == tiny_loaded.tokenizer.decode(expected[request["id"]], skip_special_tokens=True)
    stats = engine.stats
    assert stats.num_batches > max(r.get("max_tokens", 12) for r in workload)  # several steps, rows joined late
    if prefix_caching:
        assert stats.num_prefix_cached_tokens > 0  # the system prompt and the photo were shared
    else:
        assert stats.num_prefix_cached_tokens == 0


def test_requests_join_while_others_decode(tiny_loaded, tiny_config, workload, expected):
    llm = _engine(tiny_loaded, tiny_config, kv_cache_bytes=16 << 20)
    engine = llm.backend
    prepared = [llm.preprocessor.prepare(r) for r in workload]
    results, joined_late = {}, False
    engine.add(prepared[0])
    for request in prepared[1:]:
        for _ in range(2):  # two steps between arrivals: the first request is decoding when the others come
            for seq, result in engine.step():
                results[result.id] = result
        joined_late |= bool(engine.scheduler.running)
        engine.add(request)
    while engine.has_unfinished():
        for seq, result in engine.step():
            results[result.id] = result
    assert joined_late
    assert {rid: r.token_ids for rid, r in results.items()} == expected


def test_preempted_requests_are_recomputed_to_the_same_tokens(tiny_loaded, tiny_config, workload, expected):
    # A cache of 40 blocks of 16 tokens cannot hold every running request to its end: some are preempted.
    engine = _engine(tiny_loaded, tiny_config, kv_cache_bytes=40 * 16 * 768, block_size=16, max_batch_size=8,
                     enable_prefix_caching=False)
    text_only = [r for r in workload if "images" not in r] + [
        {"id": f"extra-{i}", "prompt": "Tell me about the weather today, please. " * (i + 1), "max_tokens": 40}
        for i in range(4)]
    results = engine.generate(text_only)
    assert engine.stats.num_preemptions > 0
    for request, result in zip(text_only, results):
        want = expected.get(request["id"]) or reference_generate(tiny_loaded, request, 12)
        assert result.token_ids == want, request["id"]


def test_streaming_deltas_add_up_to_the_result(tiny_loaded, tiny_config, workload):
    engine = _engine(tiny_loaded, tiny_config, kv_cache_bytes=16 << 20)
    deltas = []
    results = engine.generate_prepared([engine.preprocessor.prepare(r) for r in workload], sink=deltas.append)
    for result in results:
        mine = [d for d in deltas if d.request_id == result.id]
        assert "".join(d.text for d in mine) == result.text
        assert [d.is_final for d in mine].count(True) == 1 and mine[-1].finish_reason == result.finish_reason
        assert sum(len(d.token_ids) for d in mine) == len(result.token_ids)
    # Streams interleave: a short request ends while longer ones are still producing text.
    first_final = next(i for i, d in enumerate(deltas) if d.is_final)
    assert any(not d.is_final for d in deltas[first_final + 1:])


def test_sampling_is_seeded_per_request(tiny_loaded, tiny_config):
    engine = _engine(tiny_loaded, tiny_config, kv_cache_bytes=16 << 20)
    sampled = {"id": "s", "prompt": "Tell me a story.", "temperature": 0.9, "top_p": 0.95, "seed": 7,
               "max_tokens": 20}
    alone = engine.generate([sampled])[0]
    crowd = engine.generate([{"id": f"o{i}", "prompt": "Hi " * (i + 1)} for i in range(3)] + [sampled])[-1]
    assert alone.token_ids == crowd.token_ids
    assert engine.generate([{**sampled, "seed": 8}])[0].token_ids != alone.token_ids


def test_stop_strings_and_eos(tiny_loaded, tiny_config):
    engine = _engine(tiny_loaded, tiny_config, kv_cache_bytes=16 << 20)
    base = {"id": "a", "prompt": "Describe the scene.", "max_tokens": 24}
    full = engine.generate([base])[0]
    stop = full.text[len(full.text) // 2: len(full.text) // 2 + 2]
    stopped = engine.generate([{**base, "stop": [stop]}])[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]
    assert full.finish_reason == "length" and len(full.token_ids) == 24


def test_a_request_the_cache_can_never_hold_fails_alone(tiny_loaded, tiny_config):
    engine = _engine(tiny_loaded, tiny_config, kv_cache_bytes=8 * 16 * 768, block_size=16)  # 7 usable blocks
    results = engine.generate([{"id": "big", "prompt": "word " * 150, "max_tokens": 10},
                               {"id": "small", "prompt": "Hello", "max_tokens": 4}])
    assert results[0].finish_reason == "error" and results[0].error_kind == "kv_cache_too_small"
    assert results[1].ok and len(results[1].token_ids) == 4


def test_image_prefix_reuse_skips_the_encoder(tiny_loaded, tiny_config, monkeypatch):
    engine = _engine(tiny_loaded, tiny_config, kv_cache_bytes=16 << 20)
    visual = tiny_loaded.model.model.visual
    calls = []
    original = visual.forward
    monkeypatch.setattr(visual, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    image = make_image(300, 200, 5)
    # A long shared prefix: the image and a long question, so whole blocks after the image are shared too.
    questions = [{"id": f"q{i}", "prompt": "Look at the picture carefully and answer. " * 4 + f"Question {i}?",
                  "images": [image], "max_tokens": 4} for i in range(3)]
    first = engine.generate(questions[:1])
    rest = engine.generate(questions[1:])
    assert len(calls) == 1  # the image's tokens came from the cache for the second and third question
    assert all(r.ok for r in first + rest)
    assert [r.token_ids for r in rest] == [reference_generate(tiny_loaded, q, 4) for q in questions[1:]]


def test_same_image_then_different_text_reuses_only_whole_images(tiny_loaded, tiny_config, sample_images):
    # The second prompt shares the image's tokens but not the text right after it: the cached match ends inside
    # the image, and the engine must back off to before the image rather than cut it (a bug once: the image's
    # last tokens were then computed without their image features). Its first-token logits must be those of a
    # forward over the whole prompt.
    engine = _engine(tiny_loaded, tiny_config, kv_cache_bytes=16 << 20)
    photo = str(sample_images[3])
    engine.generate([{"id": "q1", "prompt": "Count the shapes.", "images": [photo], "max_tokens": 8}])
    second = {"id": "q2", "prompt": "What colours do you see?", "images": [photo], "max_tokens": 8}
    prepared = engine.preprocessor.prepare(second)
    seen = []
    prefill = engine.backend.runner.prefill_runner
    run = prefill.run
    prefill.run = lambda seq, *a: seen.append((seq.num_cached_tokens, run(seq, *a))) or seen[-1][1]
    [result] = engine.generate_prepared([prepared])
    with torch.inference_mode():
        full = tiny_loaded.model(
            input_ids=torch.from_numpy(prepared.input_ids)[None],
            mm_token_type_ids=torch.from_numpy(prepared.mm_token_type_ids)[None],
            pixel_values=torch.from_numpy(prepared.pixel_values),
            image_grid_thw=torch.from_numpy(prepared.image_grid_thw)).logits[0, -1]
    torch.testing.assert_close(seen[0][1].logits, full, atol=1e-4, rtol=1e-4)
    assert result.token_ids == reference_generate(tiny_loaded, second, 8)


def test_a_shared_system_prompt_is_reused(tiny_loaded, tiny_config, sample_images):
    engine = _engine(tiny_loaded, tiny_config, kv_cache_bytes=16 << 20)
    system = {"role": "system", "content": "Be brief. " * 20}

    def ask(request_id, question):
        return {"id": request_id, "messages": [system, {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": str(sample_images[3])}},
            {"type": "text", "text": question}]}], "max_tokens": 8}

    engine.generate([ask("s1", "One?")])
    [result] = engine.generate([ask("s2", "Two?")])
    assert engine.stats.num_prefix_cached_tokens >= 48  # the system prompt's whole blocks
    assert result.token_ids == reference_generate(tiny_loaded, ask("s2", "Two?"), 8)


@pytest.mark.parametrize("backend", ["engine", "hf"])
def test_stream_yields_deltas_then_each_result(tiny_loaded, tiny_config, backend):
    from vlray.llm import LLM
    from vlray.schema import GenerationResult

    config = tiny_config.with_updates(kv_cache_bytes=16 << 20)
    llm = _engine(tiny_loaded, config) if backend == "engine" else LLM(config.with_updates(backend="hf"), loaded=tiny_loaded)
    requests = [{"id": "a", "prompt": "Hello", "max_tokens": 5}, {"id": "bad", "prompt": ""},
                {"id": "b", "prompt": "Tell me more.", "max_tokens": 12}]
    events = list(llm.stream(requests))
    results = {e.id: e for e in events if isinstance(e, GenerationResult)}
    assert set(results) == {"a", "bad", "b"} and results["bad"].error_kind == "empty_prompt"
    for request_id in ("a", "b"):
        deltas = [e for e in events if not isinstance(e, GenerationResult) and e.request_id == request_id]
        assert "".join(d.text for d in deltas) == results[request_id].text
        assert events.index(results[request_id]) > events.index(deltas[-1])  # the result follows its deltas
    assert results["a"].token_ids == reference_generate(tiny_loaded, requests[0], 12)
    assert llm.stats.num_requests == 3 and llm.stats.num_failed == 1
