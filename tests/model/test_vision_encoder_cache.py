"""The vision-encoder cache: same tokens with it on and off (greedy), each image encoded once however many
questions ask about it (the encoder's own calls are counted), damaged cache files recomputed, and the
VisionEncoder API equal to the model's get_image_features."""

from collections.abc import Iterator

import pytest
import torch

from vlray.cache.tiered_store import TieredStore
from vlray.model.vision_encoder import VisionEncoder, to_mm_encoder_outputs
from vlray.model.vision_encoder_cache import deserialize_features, serialize_features
from vlray.llm import LLM
from vlray.testing.reference import reference_generate

QUESTIONS = ["What is in this image?", "Count the shapes.", "Describe the colours in detail, please.",
             "Read the text."]


class EncoderCounter:
    """Counts runs of the model's vision tower and the images in them (a forward hook on `visual`)."""

    def __init__(self, model) -> None:
        self.calls = self.images = 0
        self.handle = model.model.visual.register_forward_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs, output) -> None:
        self.calls += 1
        self.images += int(kwargs["grid_thw"].shape[0])


@pytest.fixture
def counter(tiny_loaded) -> Iterator[EncoderCounter]:
    counter = EncoderCounter(tiny_loaded.model)
    yield counter
    counter.handle.remove()


@pytest.fixture
def four_questions(sample_images) -> list[list[dict]]:
    """Four rounds; each asks one question about every image (as re-runs of a job with a new prompt do)."""
    return [[{"id": f"q{q}-img{i}", "prompt": question, "images": [str(image)], "max_tokens": 4}
             for i, image in enumerate(sample_images)] for q, question in enumerate(QUESTIONS)]


def memory_store() -> TieredStore:
    return TieredStore(None, hot_bytes=1 << 30, warm_bytes=0, cold_bytes=0)


def test_vision_encoder_equals_get_image_features(tiny_loaded, sample_images, tiny_config):
    prepared = [LLM(tiny_config.with_updates(backend="hf", cache=False), loaded=tiny_loaded).preprocessor.prepare(
        {"id": "x", "prompt": "Compare.", "images": [str(sample_images[0]), str(sample_images[2])]})]
    pixels, grid = torch.from_numpy(prepared[0].pixel_values), torch.from_numpy(prepared[0].image_grid_thw)
    encoder = VisionEncoder(tiny_loaded.model, tiny_loaded.profile)
    features = encoder.encode(pixels, grid)
    layers = encoder.num_deepstack
    with torch.inference_mode():
        expected = tiny_loaded.model.get_image_features(pixels, grid, return_dict=True)
    assert len(features) == 2
    for i, f in enumerate(features):
        assert torch.equal(f.embeds, expected.pooler_output[i])
        assert len(f.deepstack) == len(expected.deepstack_features) == layers >= 1
        assert all(torch.equal(f.deepstack[k], expected.deepstack_features[k][i]) for k in range(layers))
    assert [f.num_tokens for f in features] == [int(g.prod()) // 4 for g in grid]
    outputs = to_mm_encoder_outputs(features)["image"]
    assert len(outputs.pooler_output) == 2 and len(outputs.deepstack_features) == layers
    blob = serialize_features(features[1])
    again = deserialize_features(blob, features[1].num_tokens, layers, torch.float32)
    assert torch.equal(again.embeds, features[1].embeds) and torch.equal(again.deepstack[-1], features[1].deepstack[-1])
    for tokens, num_layers, dtype in [(features[1].num_tokens + 1, layers, torch.float32),
                                      (features[1].num_tokens, layers + 1, torch.float32),
                                      (features[1].num_tokens, layers, torch.float16)]:
        with pytest.raises(ValueError, match="expected"):
            deserialize_features(blob, tokens, num_layers, dtype)


def test_cache_on_equals_off_and_encodes_each_image_once(tiny_loaded, tiny_config, four_questions, counter):
    off = LLM(tiny_config.with_updates(backend="hf", cache=False, max_batch_size=3), loaded=tiny_loaded)
    expected = [off.generate(round_) for round_ in four_questions]
    num_images = len(four_questions[0])
    assert (counter.images, off.stats.num_images_encoded) == (4 * num_images, 4 * num_images)

    counter.calls = counter.images = 0
    store = memory_store()
    on = LLM(tiny_config.with_updates(backend="hf", max_batch_size=3), loaded=tiny_loaded, cache=store)
    got = [on.generate(round_) for round_ in four_questions]
    assert [[r.token_ids for r in round_] for round_ in got] == [[r.token_ids for r in round_] for round_ in expected]
    assert counter.images == num_images  # N images encoded, not 4N
    assert counter.calls == on.stats.num_encoder_calls == 2  # round one: two batches (max 3 rows), one call each
    assert on.stats.num_images_encoded == num_images and on.stats.num_images == 4 * num_images
    assert on.stats.num_preprocessed_cache_hits == 3 * num_images
    request = four_questions[2][1]
    assert got[2][1].token_ids == reference_generate(tiny_loaded, request, tiny_config.default_max_tokens)


def test_questions_about_one_image_in_one_batch_encode_it_once(tiny_loaded, tiny_config, four_questions, counter):
    requests = [r for round_ in four_questions for r in round_]
    off = LLM(tiny_config.with_updates(backend="hf", cache=False), loaded=tiny_loaded).generate(requests)
    counter.calls = counter.images = 0
    on = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded, cache=memory_store())
    results = on.generate(requests)
    assert [r.token_ids for r in results] == [r.token_ids for r in off]
    assert counter.images == len(four_questions[0]) == on.stats.num_images_encoded
    assert counter.calls == on.stats.num_batches  # one packed call per batch, misses only


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_damaged_cache_files_are_recomputed(tiny_loaded, tiny_config, sample_images, tmp_path, counter, damage):
    requests = [{"id": f"img{i}", "prompt": "What is this?", "images": [str(p)], "max_tokens": 4}
                for i, p in enumerate(sample_images[:3])]
    # No hot tier: every entry is a file in warm, so every lookup reads a file.
    config = tiny_config.with_updates(cache_preprocessed_images=False)
    store = TieredStore(tmp_path, hot_bytes=0, warm_bytes=1 << 30, cold_bytes=0)
    first = LLM(config.with_updates(backend="hf"), loaded=tiny_loaded, cache=store).generate(requests)
    files = sorted((tmp_path / "warm").glob("enc-*.bin"))
    assert len(files) == 3
    blob = files[0].read_bytes()
    files[0].write_bytes(blob[:-100] + bytes(b ^ 0xFF for b in blob[-100:]) if damage == "corrupt"
                         else blob[: len(blob) // 3])
    counter.calls = counter.images = 0
    second = LLM(config.with_updates(backend="hf"), loaded=tiny_loaded, cache=store).generate(requests)
    assert [r.token_ids for r in second] == [r.token_ids for r in first]
    assert counter.images == 1  # only the damaged one was encoded again
    stats = store.stats()
    assert stats["corrupt_files"] == 1 and stats["hits"]["warm"] == 2
    assert len(list((tmp_path / "warm").glob("enc-*.bin"))) == 3  # and stored again


def test_prepared_requests_without_hashes_are_keyed_by_their_patches(tiny_loaded, tiny_config, sample_images, counter):
    llm = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded, cache=memory_store())
    prepared = [llm.preprocessor.prepare({"id": f"r{i}", "prompt": q, "images": [str(sample_images[1])]})
                for i, q in enumerate(QUESTIONS[:2])]
    for p in prepared:
        p.image_hashes = []
    counter.calls = counter.images = 0
    first = llm.generate_prepared(prepared[:1])
    second = llm.generate_prepared(prepared[1:])
    assert counter.images == 1
    off = LLM(tiny_config.with_updates(backend="hf", cache=False), loaded=tiny_loaded).generate_prepared(prepared)
    assert [r.token_ids for r in first + second] == [r.token_ids for r in off]


def test_the_engine_uses_the_encoder_cache_too(tiny_loaded, tiny_config, four_questions, counter):
    # Prefix caching off, so only the encoder cache can spare the encoder.
    config = tiny_config.with_updates(kv_cache_bytes=32 << 20, enable_prefix_caching=False)
    off = LLM(config.with_updates(backend="engine", cache=False), loaded=tiny_loaded)
    expected = [[r.token_ids for r in off.generate(round_)] for round_ in four_questions]
    counter.calls = counter.images = 0
    on = LLM(config.with_updates(backend="engine"), loaded=tiny_loaded, cache=memory_store())
    assert [[r.token_ids for r in on.generate(round_)] for round_ in four_questions] == expected
    num_images = len(four_questions[0])
    assert counter.images == on.stats.num_images_encoded == num_images
    assert on.stats.num_images == 4 * num_images
