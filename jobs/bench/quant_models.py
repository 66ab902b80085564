"""The models the quant benchmark measures: the tiny model or the 2B config with random weights, in each form."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vlray.model.loader import LoadedModel
from vlray.model.quantization import quantize_model
from vlray.model.quantization.random_weights import build_quantized_random

# variant -> (quantization, vision_quantization). The "+vision" ones quantise the vision tower's linears too: the
# memory the whole model needs, which is what a small laptop cares about.
CPU_VARIANTS = {"fp32": ("none", "none"), "bf16": ("none", "none"), "int8": ("int8", "none"),
                "int4": ("int4", "none"), "int8+vision": ("int8", "int8"), "int4+vision": ("int4", "int8"),
                "int4-aten": ("int4", "none")}
# int4-aten: PyTorch's int4 kernel instead of vlray's AVX2 one (VLRAY_INT4_KERNEL=aten in the variant's process)
CUDA_VARIANTS = {"fp16": ("none", "none"), "nf4": ("int4", "none")}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def cpu_has_bf16() -> bool:
    """bf16 instructions (AVX-512 BF16 or AMX): without them bf16 matmuls are emulated and slow."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_isa() -> str:
    """The best x86 vector extensions present, for labelling figures."""
    flags = cpu_flags()
    for name, flag in (("AMX", "amx_bf16"), ("AVX-512 BF16", "avx512_bf16"), ("AVX-512 VNNI", "avx512_vnni"),
                       ("AVX-512", "avx512f"), ("AVX2", "avx2")):
        if flag in flags:
            return name
    return torch.backends.cpu.get_cpu_capability()


def load_quant_model(variant: str, size: str, device: str, layers: int | None = None) -> tuple[LoadedModel, str]:
    """(the model in this form, a line saying what was quantised)."""
    from vlray.config import EngineConfig
    from vlray.model.device_profile import detect_profile
    from vlray.model.loader import load_model, load_processor, wrap_model
    from vlray.model.presets import build_model
    from jobs.bench.bench_models import tiny_model_dir, two_b_config

    table = CUDA_VARIANTS if device == "cuda" else CPU_VARIANTS
    if variant not in table:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(table)} on {device}")
    method, vision = table[variant]
    if variant.endswith("-aten"):
        from vlray.model.quantization.int4_avx2_linear import KERNEL_ENV, load_kernel

        os.environ[KERNEL_ENV] = "aten"  # (each variant runs in a process of its own)
        load_kernel.cache_clear()
    profile_name = "sm61" if device == "cuda" else "cpu"  # sm61 settings forced on whatever card is there
    dtype = "bfloat16" if variant == "bf16" else None
    profile = detect_profile(profile_name, dtype)
    capability = profile.capability
    tiny_dir = tiny_model_dir(Path.home() / ".cache" / "vlray-bench")
    config = EngineConfig(model=str(tiny_dir), device_profile=profile_name, dtype=dtype, cache=False)
    if size == "tiny":
        loaded = load_model(config, profile)
        summary = quantize_model(loaded.model, method, vision, capability=capability)
        return loaded, summary.describe()
    processor = load_processor(tiny_dir, config.max_pixels)
    tokenizer = processor.tokenizer
    model_config = two_b_config(tokenizer)
    if layers:
        model_config.text_config.num_hidden_layers = layers
        model_config.vision_config.depth = layers
        model_config.vision_config.deepstack_visual_indexes = [i for i in model_config.vision_config.deepstack_visual_indexes if i < layers]
    if device == "cpu" and variant != "bf16":
        model, summary = build_quantized_random(model_config, method, vision)  # never whole in fp32 unless fp32
    else:
        model = build_model(model_config, device=profile.device, dtype=profile.dtype)
        summary = quantize_model(model, method, vision, capability=capability)
    model.config._attn_implementation = "sdpa"
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return wrap_model(model.eval(), processor, profile, config, fingerprint=f"random-2b-{variant}"), summary.describe()
