"""The preprocessed-image cache: prepared requests equal the processor's own output field for field, a hit is
never decoded, bad images fail as they do without the cache, and the key follows the processor's settings."""

import base64
import io

import numpy as np
import pytest
from vlray.inputs import preprocessed_image_cache

from vlray.cache.keys import preprocessed_image_key, processor_settings
from vlray.cache.tiered_store import TieredStore
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.model.loader import load_processor
from vlray.schema import RequestError
from vlray.testing.sample_images import make_image

FIELDS = ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw")


def preprocessors(loaded, store, max_input_pixels=36_000_000):
    args = (loaded.processor, loaded.max_model_len, 16, max_input_pixels)
    return RequestPreprocessor(*args), RequestPreprocessor(*args, image_cache=store)


def assert_same(plain, cached):
    for name in FIELDS:
        a, b = getattr(plain, name), getattr(cached, name)
        assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b)), name
    assert plain.image_hashes == cached.image_hashes


@pytest.fixture
def requests(sample_images):
    buffer = io.BytesIO()
    make_image(90, 70, seed=3).save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    small, jpg, tall, photo, large = sample_images
    return [
        {"id": "one", "prompt": "What is this?", "images": [str(jpg)]},
        {"id": "two", "prompt": "Compare.", "images": [str(tall), str(small)]},
        {"id": "same-twice", "prompt": "Compare.", "images": [str(photo), str(photo)]},
        {"id": "pil", "prompt": "And this?", "images": [make_image(120, 80, seed=5)]},
        {"id": "chat", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                         {"type": "text", "text": "Colour?"},
                                         {"type": "image_url", "image_url": {"url": f"file://{large}"}}]}]},
        {"id": "text", "prompt": "No image here."},
    ]


def test_cached_preprocessing_equals_the_processor(tiny_loaded, requests, monkeypatch):
    store = TieredStore(None, 1 << 30, 0, 0)
    plain, cached = preprocessors(tiny_loaded, store)
    for request in requests:
        assert_same(plain.prepare(request), cached.prepare(request))
    assert cached.image_cache.num_misses == 7 and cached.image_cache.num_hits == 1  # same-twice: second is a hit

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached image was decoded")

    monkeypatch.setattr(preprocessed_image_cache, "load_image", no_decoding)
    for request in requests:
        if request["id"] != "pil":  # a PIL image is decoded already; its hash is of its pixels
            assert_same(plain.prepare(request), cached.prepare(request))
    assert cached.image_cache.num_misses == 7


def test_bad_images_fail_the_same_way(tiny_loaded, sample_images, tmp_path):
    png = sample_images[0].read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><rect/></svg>")
    plain, cached = preprocessors(tiny_loaded, TieredStore(None, 1 << 30, 0, 0), max_input_pixels=500_000)
    sources = [tmp_path / "missing.png", tmp_path / "truncated.png", tmp_path / "drawing.svg", sample_images[4]]
    for source in sources:
        request = {"id": "bad", "prompt": "What?", "images": [str(source)]}
        with pytest.raises(RequestError) as without:
            plain.prepare(request)
        for _ in range(2):  # nothing bad is ever cached
            with pytest.raises(RequestError) as with_cache:
                cached.prepare(request)
            assert with_cache.value.kind == without.value.kind
    assert cached.image_cache.num_hits == 0


def test_key_follows_settings_and_a_bad_value_is_reprocessed(tiny_loaded, tiny_model_dir, sample_images, caplog):
    settings = processor_settings(tiny_loaded.processor)
    assert processor_settings(load_processor(tiny_model_dir, 512 * 512)) != settings
    assert preprocessed_image_key("h", settings, 10) != preprocessed_image_key("h", settings, 11)
    store = TieredStore(None, 1 << 30, 0, 0)
    plain, cached = preprocessors(tiny_loaded, store)
    request = {"id": "one", "prompt": "What is this?", "images": [str(sample_images[1])]}
    expected = plain.prepare(request)
    key = preprocessed_image_key(expected.image_hashes[0], settings, 36_000_000)
    store.put(key, b"not safetensors")
    assert_same(expected, cached.prepare(request))
    assert "unusable" in caplog.text and cached.image_cache.num_misses == 1
