"""The static batcher: batched greedy output equals plain transformers generate, one request at a time, token for
token; bad requests fail alone; per-request sampling, stop strings and max_tokens hold inside batches."""

import base64
import io

import pytest
import torch
from PIL import Image

from vlray.engine.sampling.parallel_sampling import expand_samples
from vlray.llm import LLM
from vlray.testing.reference import reference_generate
from vlray.testing.sample_images import make_image


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def mixed_requests(sample_images):
    """Images from 64x64 to 1024x768, text-only rows, prompts of different lengths, chats, two-image rows."""
    small, jpg, tall, photo, large = (str(p) for p in sample_images)
    return [
        {"id": "img-small", "prompt": "What is in this image?", "images": [small]},
        {"id": "text-short", "prompt": "Hello"},
        {"id": "img-large", "prompt": "Describe the picture in detail, please.", "images": [large], "max_tokens": 6},
        {"id": "text-long", "prompt": "Describe a city street at night with many people and bright signs. " * 6},
        {"id": "img-jpg", "prompt": "Read the text", "images": [jpg], "max_tokens": 20},
        {"id": "two-images", "prompt": "Compare these two.", "images": [tall, small]},
        {"id": "chat", "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(make_image(200, 150, 9))}},
                                         {"type": "text", "text": "What colour is it?"}]},
        ]},
        {"id": "multi-turn", "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one?"},
        ], "max_tokens": 9},
        {"id": "img-photo", "prompt": "Count the shapes.", "images": [photo]},
        {"id": "text-mid", "prompt": "What is the capital of the country with the most people?"},
    ]


def test_batched_equals_one_at_a_time(tiny_loaded, tiny_config, mixed_requests):
    # A budget that forces several multi-row batches.
    llm = LLM(tiny_config.with_updates(backend="hf", max_batch_tokens=1500, max_batch_size=4), loaded=tiny_loaded)
    results = llm.generate(mixed_requests)
    assert [r.id for r in results] == [r["id"] for r in mixed_requests]
    for request, result in zip(mixed_requests, results):
        assert result.ok, result.error
        expected = reference_generate(tiny_loaded, request, tiny_config.default_max_tokens)
        assert result.token_ids == expected, request["id"]
        assert result.num_generated_tokens == len(expected)
        assert result.text == tiny_loaded.tokenizer.decode(expected, skip_special_tokens=True)
    stats = llm.stats
    assert 2 <= stats.num_batches < len(mixed_requests)  # really batched, in more than one batch
    assert stats.num_ok == len(mixed_requests)
    assert 0 < stats.padding_fraction < 1


def test_bucketing_lowers_padding(tiny_loaded, tiny_config, mixed_requests):
    config = tiny_config.with_updates(max_batch_tokens=3000, max_batch_size=4)
    bucketed = LLM(config.with_updates(backend="hf", bucket_static_batches=True), loaded=tiny_loaded)
    in_order = LLM(config.with_updates(backend="hf", bucket_static_batches=False), loaded=tiny_loaded)
    first, second = bucketed.generate(mixed_requests), in_order.generate(mixed_requests)
    assert [r.token_ids for r in first] == [r.token_ids for r in second]
    assert bucketed.stats.padding_fraction < in_order.stats.padding_fraction


def test_each_bad_input_fails_alone(tiny_loaded, tiny_config, sample_images, tmp_path):
    png = sample_images[0].read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><rect/></svg>")
    good = [{"id": "good-1", "prompt": "What is this?", "images": [str(sample_images[1])]},
            {"id": "good-2", "prompt": "Say something."}]
    bad = [
        ({"id": "missing", "prompt": "x", "images": [str(tmp_path / "nope.png")]}, "image_not_found", "not found"),
        ({"id": "truncated", "prompt": "x", "images": [str(tmp_path / "truncated.png")]}, "corrupt_image",
         "truncated"),
        ({"id": "unreadable", "prompt": "x", "images": [b"\x00\x01 not an image"]}, "unsupported_image",
         "not a readable image"),
        ({"id": "svg", "prompt": "x", "images": [str(tmp_path / "drawing.svg")]}, "unsupported_image", "SVG"),
        ({"id": "empty", "prompt": "   "}, "empty_prompt", "prompt is empty"),
        ({"id": "too-long", "prompt": "word " * 3000}, "context_overflow", "over the model's context of 2048"),
        ({"prompt": "who am I"}, "missing_id", "id: Field required"),
    ]
    requests = [good[0]] + [b[0] for b in bad] + [good[1]]
    llm = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded)
    results = llm.generate(requests)
    for (request, kind, fragment), result in zip(bad, results[1:-1]):
        assert result.finish_reason == "error"
        assert result.error_kind == kind, result.error
        assert fragment in result.error
        assert result.id == request.get("id")
    alone = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded).generate(good)
    assert [r.token_ids for r in (results[0], results[-1])] == [r.token_ids for r in alone]
    assert all(r.ok for r in alone)
    assert llm.stats.num_failed == len(bad)
    assert llm.stats.errors_by_kind["unsupported_image"] == 2


def test_large_photo_is_capped_by_max_pixels(tiny_loaded, tiny_config):
    llm = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded)
    prepared = llm.preprocessor.prepare({"id": "photo", "prompt": "Hi", "images": [make_image(4000, 3000, 1)]})
    visual_tokens = int(prepared.image_grid_thw.prod()) // 4
    assert visual_tokens <= tiny_config.max_pixels // (32 * 32)
    assert visual_tokens > 900  # resized down, not thrown away
    [result] = llm.generate_prepared([prepared])
    assert result.ok


def test_sampling_is_per_request_and_seeded(tiny_loaded, tiny_config):
    sampled = {"id": "s", "prompt": "Tell me a story.", "temperature": 1.0, "top_p": 0.9, "seed": 42,
               "max_tokens": 16}
    others = [{"id": f"o{i}", "prompt": "Hello " * (i + 1)} for i in range(3)]
    llm = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded)
    alone = llm.generate([sampled])[0]
    in_batch = llm.generate(others + [sampled])[-1]
    assert alone.token_ids == in_batch.token_ids
    other_seed = llm.generate([{**sampled, "seed": 43}])[0]
    assert other_seed.token_ids != alone.token_ids
    greedy = llm.generate(others)
    assert [r.token_ids for r in greedy] == [r.token_ids for r in llm.generate(others + [sampled])[:3]]


def test_stop_strings_and_max_tokens_per_row(tiny_loaded, tiny_config):
    llm = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded)
    base = {"id": "a", "prompt": "Describe the scene.", "max_tokens": 20}
    full = llm.generate([base])[0]
    stop = full.text[len(full.text) // 2: len(full.text) // 2 + 2]
    assert stop and stop in full.text
    stopped, short = llm.generate([{**base, "stop": [stop]}, {**base, "id": "b", "max_tokens": 3}])
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]
    assert (short.finish_reason, short.token_ids) == ("length", full.token_ids[:3])


def test_a_failing_batch_is_retried_row_by_row(tiny_loaded, tiny_config, monkeypatch):
    requests = [{"id": str(i), "prompt": f"Question number {i}?"} for i in range(4)]
    expected = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded).generate(requests)
    llm = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded)
    real = llm.backend.runner.generate

    def flaky(batch, batch_requests, sink=None):
        if len(batch_requests) > 1 or batch_requests[0].request_id == "2":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(batch, batch_requests, sink=sink)

    monkeypatch.setattr(llm.backend.runner, "generate", flaky)
    results = llm.generate(requests)
    assert [r.token_ids for i, r in enumerate(results) if i != 2] == [r.token_ids for i, r in enumerate(expected)
                                                                       if i != 2]
    assert results[2].finish_reason == "error" and "out of memory" in results[2].error


def test_penalties_and_top_k_work_and_what_it_lacks_is_refused(tiny_loaded, tiny_config):
    llm = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded)
    base = {"id": "p", "prompt": "Describe a busy street at night with many signs.", "max_tokens": 16}
    prepared = llm.preprocessor.prepare(base)
    ids = torch.as_tensor(prepared.input_ids)[None]
    with torch.inference_mode():
        expected = tiny_loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                              max_new_tokens=16, repetition_penalty=1.6)[0, ids.shape[1]:].tolist()
    penalised, short = llm.generate([{**base, "repetition_penalty": 1.6}, {"id": "s", "prompt": "Hi",
                                                                           "max_tokens": 4}])
    assert penalised.token_ids == expected  # left padding (a shorter row in the batch) is not counted
    sampled = {**base, "id": "k", "temperature": 1.0, "top_k": 5, "min_p": 0.05, "presence_penalty": 1.0, "seed": 1}
    assert llm.generate([sampled])[0].token_ids == llm.generate([sampled])[0].token_ids
    refused = llm.generate([{**base, "logprobs": 2}, {**base, "id": "j", "response_format": {"type": "json_object"}}])
    assert [r.error_kind for r in refused] == ["unsupported", "unsupported"]
    assert "logprobs" in refused[0].error and "response_format" in refused[1].error
    grouped = llm.generate_prepared(expand_samples(prepared, 2))
    assert all(not r.ok and "n:" in r.error for r in grouped)
