"""A model split across two sides (vision, embeddings, decoder layers, head: llama.cpp's -ngl and more) gives the
greedy tokens of plain `generate`, through the engine's prefill and its decode fast path, and crosses each
boundary it should, every step. On a CPU-only machine both sides are the CPU: a fake split that runs the same
hooks, moves and per-side KV cache as a GPU/CPU split, with the crossings counted where they can be seen."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vlray.llm import LLM
from vlray.model.device_plan import DevicePlan, Placement
from vlray.model.device_profile import select_profile
from vlray.model.loader import load_model, wrap_model
from vlray.model.placement import DeviceMoves, ModelPlacement
from vlray.model.quantization import Int8DynamicLinear, quantize_model
from vlray.model.split_loading import choose_placement, offloaded_names
from vlray.testing.reference import reference_generate

# vision on main, embeddings on the CPU side, decoder layer 0 on main, layers 1-2 and the head on the CPU side:
# every kind of boundary there is, in one model of three layers.
FAKE_SPLIT = ModelPlacement.split("cpu", torch.float32, embeddings_offloaded=True, num_main_layers=1)


@pytest.fixture(scope="module")
def workload(sample_images):
    return [
        {"id": "img", "prompt": "What is in this image?", "images": [str(sample_images[0])], "max_tokens": 10},
        {"id": "text", "prompt": "Describe a busy street at night.", "max_tokens": 12},
        {"id": "two-images", "prompt": "Compare.", "images": [str(sample_images[2]), str(sample_images[1])],
         "max_tokens": 8},
    ]


def _split(config, quantization: str = "none"):
    """The tiny model (quantised first when asked), its reference tokens per request, then split."""
    plain = load_model(config)
    if quantization != "none":
        quantize_model(plain.model, quantization)
    return wrap_model(plain.model, plain.processor, plain.profile, config, placement=FAKE_SPLIT)


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_a_split_model_gives_generates_tokens_and_crosses_every_boundary(tiny_config, workload,
                                                                        quantization) -> None:
    config = tiny_config.with_updates(cache=False, kv_cache_bytes=8 << 20, max_batch_size=3)
    loaded = _split(config, quantization)
    if quantization == "int8":
        assert isinstance(loaded.model.model.language_model.layers[1].mlp.up_proj, Int8DynamicLinear)
    expected = {r["id"]: reference_generate(loaded, r, 12) for r in workload}  # generate() through the hooks
    loaded.moves.reset()
    results = LLM(config, loaded=loaded).generate(workload)
    for request, result in zip(workload, results):
        assert result.ok, result.error
        assert result.token_ids == expected[request["id"]], request["id"]

    crossings = loaded.moves.crossings
    steps = crossings["offload->main at decoder layer 0"]  # every prefill and every decode step crosses here
    assert steps >= max(len(r.token_ids) for r in results)
    assert crossings["main->offload at decoder layer 1"] == steps
    assert crossings["offload->main at the logits"] == steps
    assert crossings["main->offload at the embeddings"] == steps
    assert crossings["main->offload at the vision outputs"] >= 1  # the step's images, in one packed call
    assert "main->offload at decoder layer 2" not in crossings  # layers 1 and 2 share a side
    assert loaded.moves.bytes["main->offload at decoder layer 1"] > 0


def test_a_vision_tower_on_the_other_side_gets_its_inputs_and_hands_its_outputs_over(tiny_config, workload) -> None:
    """Vision offloaded (the small-card plan), embeddings and layers 0-1 on main, layer 2 and the head offloaded;
    `generate` hands the tower pixels and grid on main, the engine encodes on its side."""
    placement = ModelPlacement.split("cpu", torch.float32, vision_offloaded=True, num_main_layers=2)
    config = tiny_config.with_updates(cache=False, kv_cache_bytes=8 << 20, max_batch_size=3)
    plain = load_model(config)
    loaded = wrap_model(plain.model, plain.processor, plain.profile, config, placement=placement)
    expected = {r["id"]: reference_generate(loaded, r, 12) for r in workload}
    assert loaded.moves.crossings["main->offload at the vision inputs"] == 2  # the two requests with images
    loaded.moves.reset()
    results = LLM(config, loaded=loaded).generate(workload)
    assert [r.token_ids for r in results] == [expected[r["id"]] for r in workload]
    crossings = loaded.moves.crossings
    assert crossings["offload->main at the vision outputs"] >= 1
    assert crossings["main->offload at decoder layer 2"] == crossings["offload->main at the logits"] > 0


def test_the_kv_cache_of_a_split_model_lies_beside_each_layer(tiny_config) -> None:
    placement = ModelPlacement.split("cpu", torch.float32, num_main_layers=1, offload_dtype=torch.bfloat16)
    config = tiny_config.with_updates(cache=False, kv_cache_bytes=4 << 20)
    plain = load_model(config)
    loaded = wrap_model(plain.model, plain.processor, plain.profile, config, placement=placement)
    llm = LLM(config, loaded=loaded)
    assert [k.dtype for k in llm.backend.kv_cache.k_layers] == [torch.float32, torch.bfloat16, torch.bfloat16]
    assert loaded.model.model.language_model.layers[2].mlp.up_proj.weight.dtype == torch.bfloat16
    result = llm.generate([{"id": "hi", "prompt": "Hi", "max_tokens": 3, "ignore_eos": True}])[0]
    assert result.ok and len(result.token_ids) == 3, result.error


def _cuda_profile():
    cpu = select_profile("cpu", None)
    return dataclasses.replace(cpu, name="sm61", device="cuda:0", dtype=torch.float16, capability=(6, 1))


def _plan(num_gpu_layers: int, vision_device: str, lookup_device: str = "cuda:0") -> DevicePlan:
    lookup = Placement("embeddings", lookup_device, "int8" if lookup_device == "cpu" else "fp16", 1)
    return DevicePlan([lookup], "none", vision_device, num_gpu_layers, 28, 4096, 4096, 2 << 30, 16 << 30)


def test_the_plan_decides_the_split_on_cuda_and_the_config_overrides_it(tiny_config) -> None:
    model_config = type("C", (), {"text_config": type("T", (), {"num_hidden_layers": 28})()})()
    profile = _cuda_profile()
    whole = choose_placement(tiny_config, profile, _plan(28, "cuda:0"), model_config)
    assert not whole.is_split
    planned = choose_placement(tiny_config, profile, _plan(20, "cpu"), model_config)
    assert (planned.num_main_layers, planned.vision_offloaded, planned.embeddings_offloaded) == (20, True, True)
    assert planned.layer_side(19).device.type == "cuda" and planned.layer_side(20).device.type == "cpu"
    assert planned.head.device.type == "cpu" and planned.offload.dtype == torch.float32
    overridden = choose_placement(tiny_config.with_updates(gpu_layers=40, vision_on_cpu=False), profile,
                                  _plan(20, "cpu"), model_config)
    assert not overridden.is_split  # more layers asked for than there are: all of them
    vision_only = choose_placement(tiny_config.with_updates(vision_on_cpu=True), profile, None, model_config)
    assert vision_only.vision_offloaded and vision_only.num_main_layers is None and not vision_only.head_offloaded
    # NF4 on a 4 GB card: every layer on the GPU, the lookup table on the CPU in int8, as the plan printed it
    lookup_only = choose_placement(tiny_config, profile, _plan(28, "cuda:0", lookup_device="cpu"), model_config)
    assert lookup_only.embeddings_offloaded and not lookup_only.vision_offloaded
    assert lookup_only.num_main_layers is None and not lookup_only.head_offloaded
    on_cpu = offloaded_names(planned)
    assert on_cpu("model.visual.blocks.0.attn.qkv") and on_cpu("model.language_model.layers.20.mlp.up_proj")
    assert not on_cpu("model.language_model.layers.19.mlp.up_proj") and on_cpu("lm_head")


def test_a_split_asked_of_the_cpu_profile_is_refused(tiny_config) -> None:
    with pytest.raises(ValueError, match="gpu_layers and vision_on_cpu"):
        choose_placement(tiny_config.with_updates(gpu_layers=2), select_profile("cpu", None), None, None)
    with pytest.raises(ValueError, match="gpu_layers"):
        tiny_config.with_updates(gpu_layers=-1)


def test_moves_count_crossings_and_convert_only_floating_tensors() -> None:
    moves = DeviceMoves()
    side = FAKE_SPLIT.offload
    ids, hidden = moves.to((torch.tensor([1, 2]), torch.ones(2, dtype=torch.bfloat16)), side, "b")
    assert ids.dtype == torch.long and hidden.dtype == torch.float32
    assert moves.crossings["b"] == 1 and moves.bytes["b"] == 2 * 8 + 2 * 2


@pytest.mark.cuda
@pytest.mark.parametrize("quantization", ["none", "int4"])
def test_a_gpu_cpu_split_gives_generates_tokens(tiny_config, workload, quantization) -> None:
    """The real split, sm61 settings: vision on the CPU, decoder layer 0 on the GPU, the rest and the head on the
    CPU (NF4 on the GPU and the CPU's int4 kernel under int4)."""
    config = tiny_config.with_updates(device_profile="sm61", gpu_layers=1, vision_on_cpu=True, cache=False,
                                      quantization=quantization, kv_cache_bytes=8 << 20, max_batch_size=3)
    loaded = load_model(config)
    layers = loaded.model.model.language_model.layers
    assert loaded.placement.is_split and loaded.placement.vision.device.type == "cpu"
    assert layers[0].input_layernorm.weight.is_cuda and not layers[1].input_layernorm.weight.is_cuda
    expected = {r["id"]: reference_generate(loaded, r, 12) for r in workload}
    results = LLM(config, loaded=loaded).generate(workload)
    for request, result in zip(workload, results):
        assert result.ok, result.error
        assert result.token_ids == expected[request["id"]], request["id"]
    assert loaded.moves.crossings["main->offload at decoder layer 1"] > 0
