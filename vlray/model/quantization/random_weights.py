"""A quantised model with random weights, built without the full-precision model ever existing whole.

The model is built on the meta device; each linear layer to quantise gets its random fp32 weight one at a time
(made, quantised, freed), and only the rest (norms, embeddings until they are quantised, the vision tower if it
stays in fp32) is materialised and initialised the way transformers initialises it. Peak memory is then close to
the quantised model's size rather than fp32's: for the 2B config, the peak-RSS figure the benchmark reports.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel, Qwen3VLConfig

from vlray.model.quantization.quantize_model import (
    QuantizationName,
    QuantizationSummary,
    VisionQuantizationName,
    quantize_model,
)


def random_weight_source(model: PreTrainedModel, seed: int) -> callable:
    """name -> a fresh N(0, initializer_range) fp32 tensor of that parameter's shape (biases zero)."""
    std = getattr(model.config.get_text_config(), "initializer_range", 0.02) or 0.02
    generator = torch.Generator().manual_seed(seed)
    tables: dict[str, torch.Tensor] = {}  # the tied embedding is asked for twice (head, then lookup)

    def make(name: str) -> torch.Tensor:
        if name in tables:
            return tables.pop(name)
        shape = model.get_parameter(name).shape
        if name.endswith(".bias"):
            return torch.zeros(shape)
        tensor = torch.empty(shape).normal_(0.0, std, generator=generator)
        if name.endswith("embed_tokens.weight"):
            tables[name] = tensor
        return tensor
    return make


def materialize(model: PreTrainedModel, device: str | torch.device = "cpu") -> None:
    """Give every tensor still on the meta device real storage, initialised by the model's own `_init_weights`."""
    for module in model.modules():
        has_meta = False
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                module.register_parameter(name, nn.Parameter(torch.empty_like(param, device=device),
                                                             requires_grad=False))
                has_meta = True
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer is not None and buffer.is_meta:
                persistent = name not in module._non_persistent_buffers_set
                module.register_buffer(name, torch.empty_like(buffer, device=device), persistent=persistent)
                has_meta = True
        if has_meta:
            with torch.no_grad():
                model._init_weights(module)


def build_quantized_random(config: Qwen3VLConfig, quantization: QuantizationName,
                           vision: VisionQuantizationName = "none", seed: int = 0
                           ) -> tuple[PreTrainedModel, QuantizationSummary]:
    """(model on the CPU in fp32 apart from its quantised layers, what was quantised)."""
    from vlray.model.presets import build_model

    model = build_model(config, device="meta", dtype=torch.float32, seed=seed)
    summary = quantize_model(model, quantization, vision, weight_source=random_weight_source(model, seed))
    materialize(model)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval(), summary
