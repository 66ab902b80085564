"""The preprocessed-image cache: prepared requests equal the processor's own output field for field (with the
cache and without, patches made at once or later from the resized images), a hit is never decoded, bad images
fail as they do without the cache, it stores the resized uint8 pixels, and the key follows the processor's
settings."""

import base64
import io

import numpy as np
import pytest
from vlray.inputs import preprocessed_image_cache

from vlray.cache.keys import preprocessed_image_key, processor_settings
from vlray.cache.tiered_store import TieredStore
from vlray.inputs.image_input import load_image
from vlray.inputs.preprocessor import RequestPreprocessor, to_hf_messages
from vlray.inputs.resized_image import with_pixel_values
from vlray.model.loader import load_processor
from vlray.schema import RequestError, parse_request
from vlray.testing.sample_images import make_image

FIELDS = ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw")


def preprocessors(loaded, store, max_input_pixels=36_000_000):
    args = (loaded.processor, loaded.max_model_len, 16, max_input_pixels)
    return RequestPreprocessor(*args), RequestPreprocessor(*args, image_cache=store)


def processor_output(processor, request):
    """What `processor(text=..., images=...)` itself returns for the request: the reference."""
    hf_messages, sources = to_hf_messages(parse_request(request))
    text = processor.apply_chat_template(hf_messages, tokenize=False, add_generation_prompt=True)
    images = [load_image(source, 36_000_000).image for source in sources]
    out = processor(text=[text], images=images or None, return_tensors="np")
    return (out["input_ids"][0], out.get("mm_token_type_ids", [None])[0] if images else None,
            out.get("pixel_values"), out.get("image_grid_thw"))


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
    processor = tiny_loaded.processor
    for request in requests:
        expected = plain.prepare(request)
        for name, value in zip(FIELDS, processor_output(processor, request)):
            got = getattr(expected, name)
            assert (got is None and value is None) or np.array_equal(got, value), (request["id"], name)
        assert_same(expected, cached.prepare(request))
        for preprocessor in (plain, cached):  # patches made later, on the model side, from the resized images
            later = preprocessor.prepare(request, make_patches=False)
            assert later.pixel_values is None and later.kind == expected.kind
            assert all(im.dtype == np.uint8 and im.ndim == 3 for im in later.images)
            assert_same(expected, with_pixel_values(later, processor))
    assert cached.image_cache.num_misses == 7 and cached.image_cache.num_hits == 9  # same-twice, and repeats

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


def test_an_entry_is_the_resized_uint8_image(tiny_loaded, sample_images):
    from safetensors.numpy import load

    store = TieredStore(None, 1 << 30, 0, 0)
    _, cached = preprocessors(tiny_loaded, store)
    prepared = cached.prepare({"id": "one", "prompt": "What is this?", "images": [str(sample_images[1])]})
    key = preprocessed_image_key(prepared.image_hashes[0], processor_settings(tiny_loaded.processor), 36_000_000)
    entry = load(store.get(key))
    _, grid_h, grid_w = prepared.image_grid_thw[0]
    patch = tiny_loaded.processor.image_processor.patch_size
    assert entry["pixels"].dtype == np.uint8 and entry["pixels"].shape == (grid_h * patch, grid_w * patch, 3)
    assert np.array_equal(entry["image_grid_thw"], prepared.image_grid_thw)
    assert len(store.get(key)) < prepared.pixel_values.nbytes / 7  # 8x smaller than the patches, bar the header
