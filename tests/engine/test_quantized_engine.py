"""The same quantised model gives the same greedy tokens through the engine (prefill, the decode fast path) as
through plain `generate` one request at a time: int8 and int4 text decoders, the vision tower in int8 too."""

from __future__ import annotations

import pytest

from vlray.llm import LLM
from vlray.model.loader import load_model
from vlray.testing.reference import reference_generate
from vlray.model.quantization import Int4Avx2Linear, Int4PackedLinear, Int8DynamicLinear
from vlray.model.quantization.int4_avx2_linear import KERNEL_ENV, kernel_available, load_kernel


@pytest.fixture(scope="module")
def workload(sample_images):
    return [
        {"id": "img", "prompt": "What is in this image?", "images": [str(sample_images[0])], "max_tokens": 20},
        {"id": "text", "prompt": "Describe a busy street at night. " * 3, "max_tokens": 24},
        {"id": "short", "prompt": "Hello", "max_tokens": 5},
        {"id": "two-images", "prompt": "Compare.", "images": [str(sample_images[2]), str(sample_images[1])],
         "max_tokens": 12},
    ]


@pytest.mark.parametrize("method, vision, kind, int4_kernel", [
    ("int8", "none", Int8DynamicLinear, "auto"),
    ("int4", "int8", Int4Avx2Linear, "auto"),
    ("int4", "none", Int4PackedLinear, "aten"),  # PyTorch's kernel, where the AVX2 one cannot run
])
def test_engine_equals_generate_on_the_quantized_model(tiny_config, workload, monkeypatch, method, vision, kind,
                                                       int4_kernel) -> None:
    if kind is Int4Avx2Linear and not kernel_available():
        pytest.skip("the AVX2 int4 kernel does not run here")
    monkeypatch.setenv(KERNEL_ENV, int4_kernel)
    load_kernel.cache_clear()  # (a refusal is never cached: once the variable is restored, the kernel loads again)
    config = tiny_config.with_updates(quantization=method, vision_quantization=vision, cache=False)
    loaded = load_model(config)
    layer = loaded.model.model.language_model.layers[0]
    assert isinstance(layer.self_attn.q_proj, kind) and isinstance(loaded.model.lm_head, kind)
    expected = {r["id"]: reference_generate(loaded, r, 12) for r in workload}
    engine = LLM(config.with_updates(backend="engine", kv_cache_bytes=16 << 20, max_batch_size=3), loaded=loaded)
    for request, result in zip(workload, engine.generate(workload)):
        assert result.ok, result.error
        assert result.token_ids == expected[request["id"]], request["id"]


@pytest.mark.cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_nf4_engine_equals_generate_on_cuda(tiny_config, workload, cuda_graphs) -> None:
    """NF4 (bitsandbytes) with the sm61 settings, decode eager and through CUDA graphs."""
    config = tiny_config.with_updates(device_profile="sm61", quantization="int4", cache=False, cuda_graphs=cuda_graphs)
    loaded = load_model(config)
    assert type(loaded.model.lm_head).__name__ == "Linear4bit"
    expected = {r["id"]: reference_generate(loaded, r, 12) for r in workload}
    engine = LLM(config.with_updates(backend="engine", kv_cache_bytes=16 << 20, max_batch_size=3), loaded=loaded)
    for request, result in zip(workload, engine.generate(workload)):
        assert result.ok, result.error
        assert result.token_ids == expected[request["id"]], request["id"]
