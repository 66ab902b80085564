"""A device plan's split, chosen and loaded: which components leave the GPU for the CPU, and a load that never
puts on the GPU what will not run there.

`choose_placement` turns the plan (or the config's `gpu_layers` / `vision_on_cpu`, which override it) into a
ModelPlacement. `load_split` reads the weights on the CPU in the GPU side's dtype and quantises each linear
layer with the kernel of the side it will run on (bitsandbytes on the GPU, the CPU kernels on the CPU); the
loader's `wrap_model` then moves the rest to its side and hooks the boundaries (`place_model`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from transformers import PretrainedConfig, PreTrainedModel

from vlray.config import EngineConfig
from vlray.model.device_plan import DevicePlan
from vlray.model.device_profile import DeviceProfile
from vlray.model.placement import ModelPlacement
from vlray.model.quantization.quantize_model import EMBEDDINGS, LM_HEAD, quantize_model

log = logging.getLogger(__name__)

_LAYERS = "model.language_model.layers."


def choose_placement(config: EngineConfig, profile: DeviceProfile, plan: DevicePlan | None,
                     model_config: PretrainedConfig) -> ModelPlacement:
    """The placement to load with: everything on the profile's device unless the plan (on CUDA) or the
    config's gpu_layers / vision_on_cpu move components to the CPU."""
    single = ModelPlacement.single(profile.device, profile.dtype)
    if not profile.is_cuda:
        if config.gpu_layers is not None or config.vision_on_cpu:
            raise ValueError("gpu_layers and vision_on_cpu split a model between a GPU and the CPU, but the "
                             f"device profile is {profile.name} ({profile.device}): leave them unset there.")
        return single
    num_layers = model_config.text_config.num_hidden_layers
    planned_layers = plan.num_gpu_layers if plan is not None else num_layers
    gpu_layers = min(config.gpu_layers if config.gpu_layers is not None else planned_layers, num_layers)
    if config.vision_on_cpu is not None:
        vision_on_cpu = config.vision_on_cpu
    else:
        vision_on_cpu = plan is not None and plan.vision_device == "cpu"
    # The lookup reads a few rows a step: on the CPU when layers are, or when the plan put it there (it does
    # whenever the decoder is not wholly fp16 on the GPU: the table is 0.62 GB in fp16, 0.31 GB in int8 rows).
    planned_cpu_lookup = plan is not None and any(
        p.component == "embeddings" and p.device == "cpu" for p in plan.placements)
    embeddings_offloaded = gpu_layers < num_layers or planned_cpu_lookup
    if gpu_layers == num_layers and not vision_on_cpu and not embeddings_offloaded:
        return single
    return ModelPlacement.split(
        profile.device, profile.dtype, vision_offloaded=vision_on_cpu, embeddings_offloaded=embeddings_offloaded,
        num_main_layers=gpu_layers if gpu_layers < num_layers else None)


def offloaded_names(placement: ModelPlacement):
    """Module name -> whether it runs on the offload side (the CPU), for quantize_model's choice of kernel."""
    def on_cpu(name: str) -> bool:
        if name.startswith("model.visual"):
            return placement.vision_offloaded
        if name.startswith(EMBEDDINGS):
            return placement.embeddings_offloaded
        if name.startswith(LM_HEAD):
            return placement.head_offloaded
        if name.startswith(_LAYERS):
            return placement.layer_side(int(name[len(_LAYERS):].split(".")[0])) is placement.offload
        return False
    return on_cpu


def load_split(model_dir: Path, profile: DeviceProfile, config: EngineConfig,
               placement: ModelPlacement) -> PreTrainedModel:
    """from_pretrained on the CPU in the profile's dtype, then each layer quantised for its side (when asked)."""
    from vlray.model.weights_cache import load_pretrained

    model = load_pretrained(model_dir, dataclasses.replace(profile, device="cpu"))
    if config.quantization != "none" or config.vision_quantization != "none":
        summary = quantize_model(model, config.quantization, config.vision_quantization, profile.capability,
                                 on_cpu=offloaded_names(placement))
        log.info("%s", summary.describe())
    return model
