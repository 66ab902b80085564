"""Swapping a whole model: which layers, the tied head, the meta-device build, and greedy tokens through generate."""

from __future__ import annotations

import copy

import pytest
import torch

from vlray.model.presets import build_model, load_preset_config
from vlray.model.quantization import Int4Avx2Linear, Int4PackedLinear, Int8DynamicLinear, Int8Embedding, quantize_model
from vlray.model.quantization.int4_avx2_linear import kernel_available

INT4_CPU = Int4Avx2Linear if kernel_available() else Int4PackedLinear  # the AVX2 kernel where it runs
from vlray.model.quantization.random_weights import build_quantized_random


@pytest.fixture(scope="module")
def tied_tiny():
    """The tiny config with its LM head tied to the embeddings, as Qwen3-VL-2B's is."""
    config = load_preset_config("qwen3_vl_tiny")
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = True
    return build_model(config, device="cpu")


@pytest.mark.parametrize("method, kind", [("int8", Int8DynamicLinear), ("int4", INT4_CPU)])
def test_text_linears_and_tied_head_are_swapped(tied_tiny, method: str, kind: type) -> None:
    model = copy.deepcopy(tied_tiny)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    summary = quantize_model(model, method)
    layers = model.model.language_model.layers
    assert all(isinstance(getattr(layer.self_attn, n), kind) for layer in layers for n in ("q_proj", "o_proj"))
    assert all(isinstance(layer.mlp.down_proj, kind) for layer in layers)
    assert isinstance(model.lm_head, kind) and isinstance(model.model.language_model.embed_tokens, Int8Embedding)
    assert not model.config.tie_word_embeddings and not model.config.text_config.tie_word_embeddings
    assert isinstance(model.model.visual.blocks[0].mlp.linear_fc1, torch.nn.Linear)  # vision untouched
    assert summary.num_layers["text"] == 7 * len(layers) + 1 and summary.bytes_after < summary.bytes_before / 3
    ids = torch.randint(0, 1000, (1, 12))
    with torch.inference_mode():
        ref, out = tied_tiny(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.98


def test_vision_int8_swaps_only_the_tower(tied_tiny) -> None:
    model = copy.deepcopy(tied_tiny)
    summary = quantize_model(model, "none", vision="int8")
    assert isinstance(model.model.visual.blocks[0].attn.qkv, Int8DynamicLinear)
    assert isinstance(model.lm_head, torch.nn.Linear) and "text" not in summary.num_layers


def test_bad_names_are_refused(tied_tiny) -> None:
    with pytest.raises(ValueError, match="none, int8, int4"):
        quantize_model(tied_tiny, "int3")
    with pytest.raises(ValueError, match="vision_quantization"):
        quantize_model(tied_tiny, "none", vision="int4")


def test_generate_runs_on_the_quantized_modules(tied_tiny) -> None:
    model = copy.deepcopy(tied_tiny)
    quantize_model(model, "int8")
    ids = torch.randint(0, 1000, (1, 10))
    settings = dict(max_new_tokens=8, do_sample=False)
    ref, out = tied_tiny.generate(input_ids=ids, **settings), model.generate(input_ids=ids, **settings)
    assert out.shape == ref.shape and torch.equal(out[:, :10], ids)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_meta_build_has_the_structure_and_buffers_of_a_real_build(method: str) -> None:
    config = load_preset_config("qwen3_vl_tiny")
    real = build_model(config, device="cpu")
    quantize_model(real, method)
    streamed, summary = build_quantized_random(config, method)
    assert [type(m) for m in streamed.modules()] == [type(m) for m in real.modules()]
    assert not any(t.is_meta for t in [*streamed.parameters(), *streamed.buffers()])
    real_buffers = dict(real.named_buffers())
    for name, buffer in streamed.named_buffers():
        if "rotary" in name:
            assert torch.equal(buffer, real_buffers[name]), name
    norm = streamed.model.language_model.layers[0].input_layernorm.weight
    assert torch.equal(norm, torch.ones_like(norm)) and summary.num_layers["text"] > 0
    with torch.inference_mode():
        assert torch.isfinite(streamed(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.parametrize("method, vision", [("int4", "int8"), ("int8", "none"), ("none", "int8")])
def test_a_streamed_quantised_load_equals_from_pretrained_then_quantise(tiny_model_dir, method, vision) -> None:
    """The CPU load reads each layer from the safetensors files as it quantises it (the full-precision model never
    whole in memory); it must give what from_pretrained (fp32) and then quantize_model give, tensor for tensor."""
    from vlray.model.device_profile import select_profile
    from vlray.model.quantization.quantized_loading import apply_quantization, load_quantized_streaming
    from vlray.model.weights_cache import load_pretrained

    profile = select_profile("cpu", None)
    streamed = load_quantized_streaming(tiny_model_dir, profile, method, vision)
    whole = load_pretrained(tiny_model_dir, profile)
    apply_quantization(whole, method, vision, profile)
    ours, theirs = streamed.state_dict(), whole.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(streamed.named_buffers(), whole.named_buffers()))
    ids = torch.randint(0, 500, (1, 12))
    with torch.inference_mode():
        assert torch.equal(streamed(input_ids=ids).logits, whole(input_ids=ids).logits)
    assert streamed.generation_config.eos_token_id == whole.generation_config.eos_token_id
