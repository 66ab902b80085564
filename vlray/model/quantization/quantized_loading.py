"""Quantisation as the loader applies it: which dtype to load in, then the swap, then the rest of the model put in
the profile's dtype and on its device.

On the CPU the model is built on the meta device and streamed from the checkpoint's safetensors files: each
layer to quantise is read, quantised and freed in turn, then the rest is read in, so the full-precision model
never exists whole (it gives exactly what from_pretrained in fp32 and then quantising give; tested). On CUDA
(and for folders without safetensors) the model is loaded on the CPU in the profile's dtype (bf16 on the CPU)
and each layer is quantised on its way to the GPU, so a 2 GB card never holds the fp16 model (4.26 GB) whole;
the rest moves after.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from vlray.model.device_profile import DeviceProfile
from vlray.model.quantization.int8_embedding import Int8Embedding
from vlray.model.quantization.quantize_model import QuantizationSummary, quantize_model

log = logging.getLogger(__name__)


def load_device_and_dtype(profile: DeviceProfile, quantization: str, vision: str) -> tuple[str, torch.dtype]:
    """(device, dtype) to load weights with before quantising: the profile's own when nothing is quantised."""
    if quantization == "none" and vision == "none":
        return profile.device, profile.dtype
    if profile.is_cuda:
        return "cpu", profile.dtype
    return "cpu", torch.bfloat16 if profile.dtype == torch.float32 else profile.dtype


def apply_quantization(model: nn.Module, quantization: str, vision: str, profile: DeviceProfile) -> QuantizationSummary:
    """Quantise in place for the profile's device, then cast and move what stayed unquantised."""
    capability = profile.capability if profile.is_cuda else None
    summary = quantize_model(model, quantization, vision, capability)
    if summary.num_layers:
        model.to(device=profile.device, dtype=profile.dtype)  # packed weights are integer tensors: left as they are
        _set_embedding_dtype(model, profile.dtype)
        log.info("%s", summary.describe())
    return summary


class CheckpointWeights:
    """name -> tensor, read from a model folder's safetensors files one tensor at a time (each file opened for
    the read and closed after, so no mapping of the whole checkpoint stays resident)."""

    def __init__(self, model_dir: Path) -> None:
        self.files: dict[str, Path] = {}
        for path in sorted(Path(model_dir).glob("*.safetensors")):
            with safe_open(path, framework="pt") as handle:
                self.files.update((name, path) for name in handle.keys())

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.files:
            raise KeyError(f"{name} is not in the checkpoint's safetensors files")
        with safe_open(self.files[name], framework="pt") as handle:
            return handle.get_tensor(name)


def load_quantized_streaming(model_dir: Path, profile: DeviceProfile, quantization: str, vision: str) -> nn.Module:
    """The model built on the meta device, each layer to quantise read from the checkpoint, quantised and freed
    one at a time, then the rest read in: the full-precision model never exists whole (on the CPU, a 2B int4
    load peaks near the quantised size instead of above the 4.3 GB bf16 model)."""
    from transformers import AutoConfig, GenerationConfig

    from vlray.model.presets import build_model
    from vlray.model.quantization.random_weights import materialize

    config = AutoConfig.from_pretrained(str(model_dir))
    model = build_model(config, device="meta", dtype=torch.float32)
    model.config._attn_implementation = "sdpa"
    try:
        model.generation_config = GenerationConfig.from_pretrained(str(model_dir))
    except OSError:  # no generation_config.json: the defaults from_pretrained would take from the config
        model.generation_config = GenerationConfig.from_model_config(config)
    weights = CheckpointWeights(model_dir)
    summary = quantize_model(model, quantization, vision, weight_source=weights)
    materialize(model)  # every tensor left gets storage (and non-persistent buffers their computed values) ...
    with torch.no_grad():  # ... and the checkpoint's values where it has them
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name in weights:
                tensor.copy_(weights(name))
    if getattr(model.config, "tie_word_embeddings", False):  # (unquantised head: tied as from_pretrained ties it)
        model.tie_weights()
    model.to(dtype=profile.dtype)
    _set_embedding_dtype(model, profile.dtype)
    if summary.num_layers:
        log.info("%s", summary.describe())
    return model.eval()


def _set_embedding_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    for module in model.modules():
        if isinstance(module, Int8Embedding):
            module.dtype = dtype


def load_quantized(model_dir: Path, profile: DeviceProfile, quantization: str, vision: str) -> nn.Module:
    """Quantised for the profile: on the CPU streamed from the safetensors files (load_quantized_streaming);
    on CUDA (or without safetensors) from_pretrained on the CPU in the profile's dtype, then quantised.
    The weights cache is not used: the converted full-precision copy it keeps is what quantising replaces."""
    from vlray.model.weights_cache import load_pretrained

    if not profile.is_cuda and any(Path(model_dir).glob("*.safetensors")):
        return load_quantized_streaming(model_dir, profile, quantization, vision)
    device, dtype = load_device_and_dtype(profile, quantization, vision)
    model = load_pretrained(model_dir, dataclasses.replace(profile, device=device, dtype=dtype))
    apply_quantization(model, quantization, vision, profile)
    return model
