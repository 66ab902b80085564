"""The device plan on Qwen3-VL-2B's config (meta device): every card size and CPU budget fits, with room."""

from __future__ import annotations

import pytest

from vlray.model.presets import build_model, count_parameters, load_preset_config
from vlray.model.component_sizes import component_sizes
from vlray.model.device_plan import CUDA_CONTEXT_BYTES, GiB, NoPlanFitsError, plan_devices


@pytest.fixture(scope="module")
def sizes():
    return component_sizes(load_preset_config("qwen3_vl_2b_instruct"))


def test_sizes_add_up_to_the_model(sizes) -> None:
    model = build_model(load_preset_config("qwen3_vl_2b_instruct"), device="meta")
    counted = (sizes.vision_params + sizes.embedding_params + sizes.final_norm_params
               + sizes.num_layers * (sizes.layer_linear_params + sizes.layer_other_params))
    assert sizes.tied_head and counted == count_parameters(model)
    assert sizes.kv_bytes_per_token(2) == 112 * 1024


@pytest.mark.parametrize("card_gib", [2, 3, 4, 6, 8])
def test_every_card_fits_with_room(sizes, card_gib: int) -> None:
    budget = card_gib * GiB
    plan = plan_devices(sizes, ram_bytes=16 * GiB, gpu_bytes=budget)
    on_gpu = [p for p in plan.placements if p.device.startswith("cuda")]
    assert plan.bytes_on("cuda") <= budget and plan.bytes_on("cpu") <= 16 * GiB
    assert any(p.component == "CUDA context" and p.bytes == CUDA_CONTEXT_BYTES for p in on_gpu)
    assert any(p.component == "prefill activations" for p in on_gpu)
    assert plan.kv_tokens >= 4096 and plan.num_gpu_layers == 28
    components = {p.component for p in plan.placements}
    assert {"vision tower", "embeddings", "decoder layers 0-27", "LM head", "KV cache"} <= components


def test_small_cards_get_nf4_with_vision_on_cpu_large_ones_fp16(sizes) -> None:
    small = plan_devices(sizes, 16 * GiB, 2 * GiB)
    assert (small.quantization, small.vision_device) == ("int4", "cpu")
    forms = {p.component: (p.device, p.form) for p in small.placements}
    assert forms["decoder layers 0-27"] == ("cuda:0", "nf4") and forms["embeddings"][0] == "cpu"
    large = plan_devices(sizes, 16 * GiB, 8 * GiB)
    assert (large.quantization, large.vision_device) == ("none", "cuda:0")


def test_a_card_too_small_for_all_layers_splits_them(sizes) -> None:
    plan = plan_devices(sizes, 16 * GiB, int(1.5 * GiB))
    assert 0 < plan.num_gpu_layers < 28 and plan.bytes_on("cuda") <= 1.5 * GiB
    cpu_layers = [p for p in plan.placements if p.component.startswith("decoder") and p.device == "cpu"]
    # NF4 on the GPU, so the CPU layers are int4 too: the same method with the CPU's kernel, as split_loading loads it
    assert cpu_layers and cpu_layers[0].form == "int4" and plan.kv_tokens >= 4096


@pytest.mark.parametrize("ram_gib, form", [(8, "int8"), (16, "fp32")])
def test_cpu_only_plans_fit(sizes, ram_gib: int, form: str) -> None:
    plan = plan_devices(sizes, ram_bytes=ram_gib * GiB)
    layers = next(p for p in plan.placements if p.component.startswith("decoder"))
    assert layers.form == form and plan.bytes_on("cpu") <= ram_gib * GiB and plan.kv_tokens >= 4096
    assert plan.bytes_on("cuda") == 0


def test_pinned_quantization_is_respected(sizes) -> None:
    plan = plan_devices(sizes, 16 * GiB, 4 * GiB, quantization="int4")
    assert plan.quantization == "int4"
    cpu = plan_devices(sizes, 16 * GiB, quantization="int4")
    assert next(p for p in cpu.placements if p.component.startswith("decoder")).form == "int4"


def test_refuses_clearly_when_nothing_fits(sizes) -> None:
    with pytest.raises(NoPlanFitsError, match="nothing fits in 2.00 GiB of CPU RAM"):
        plan_devices(sizes, ram_bytes=2 * GiB)
    with pytest.raises(NoPlanFitsError, match="GPU memory"):
        plan_devices(sizes, ram_bytes=3 * GiB, gpu_bytes=256 * 1024**2)
    with pytest.raises(ValueError, match="quantization must be"):
        plan_devices(sizes, 16 * GiB, quantization="int3")


def test_table_names_every_component_and_the_budget(sizes) -> None:
    table = plan_devices(sizes, 16 * GiB, 2 * GiB).table()
    for word in ("vision tower", "embeddings", "decoder layers 0-27", "LM head", "KV cache", "nf4", "of 2.00 GiB"):
        assert word in table
