"""Quantisation as the loader applies it: which dtype to load in, then the swap, then the rest of the model put in
the profile's dtype and on its device.

On the CPU a quantised model is loaded in bf16 (Qwen3-VL's checkpoints are bf16), not in the profile's fp32:
the quantised layers keep none of it, and the peak before the swap is then half of fp32's. On CUDA the model is
loaded on the CPU in fp16 and each layer is quantised on its way to the GPU, so a 2 GB card never holds the
fp16 model (4.26 GB) whole; the rest moves after.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
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
        for module in model.modules():
            if isinstance(module, Int8Embedding):
                module.dtype = profile.dtype
        log.info("%s", summary.describe())
    return summary


def load_quantized(model_dir: Path, profile: DeviceProfile, quantization: str, vision: str) -> nn.Module:
    """from_pretrained on the CPU (bf16 there, the profile's dtype for CUDA), then quantised for the profile.
    The weights cache is not used: the converted full-precision copy it keeps is what quantising replaces."""
    from vlray.model.weights_cache import load_pretrained

    device, dtype = load_device_and_dtype(profile, quantization, vision)
    model = load_pretrained(model_dir, dataclasses.replace(profile, device=device, dtype=dtype))
    apply_quantization(model, quantization, vision, profile)
    return model
