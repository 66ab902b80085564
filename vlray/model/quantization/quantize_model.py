"""Swap a Qwen3-VL model's linear layers for quantised ones, in place: the text decoder's projections and the LM
head (`quantization`), and the vision tower's linears (`vision_quantization`), each with the kernel that runs on
the layer's device (README, "Quantisation", says why each was chosen).

| method | CPU (x86: AVX2, AVX-512, AMX)                         | CUDA                              |
| ------ | ----------------------------------------------------- | --------------------------------- |
| int8   | fbgemm int8 weights x int8 dynamic activations        | bitsandbytes LLM.int8 (sm75+)     |
| int4   | vlray's AVX2 int4 x int8 kernel (int4_avx2.c), else   | bitsandbytes NF4 (sm60+, Pascal)  |
|        | aten `_weight_int4pack_mm_for_cpu` (bf16 activations) |                                   |

Qwen3-VL-2B ties the LM head to the embeddings: the head is quantised like any linear layer (it is read on every
token), and on the CPU the lookup table becomes int8 rows of its own, so no fp32 copy of the 311 M parameters
stays behind. Layers can be swapped one at a time from a `WeightSource` (a meta-device model, weights produced on
demand), so the full-precision model never has to exist whole: peak memory stays near the quantised size.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import get_args

import torch
from torch import nn

from vlray.config import QuantizationName, VisionQuantizationName
from vlray.model.quantization import int4_avx2_linear
from vlray.model.quantization.int4_avx2_linear import Int4Avx2Linear
from vlray.model.quantization.int4_packed_linear import Int4PackedLinear, pick_group_size
from vlray.model.quantization.int8_dynamic_linear import Int8DynamicLinear
from vlray.model.quantization.int8_embedding import Int8Embedding
from vlray.model.quantization.nf4_linear import compute_dtype_for, int8_from_linear, module_nbytes, nf4_from_linear

QUANTIZATION_NAMES: tuple[str, ...] = get_args(QuantizationName)
VISION_QUANTIZATION_NAMES: tuple[str, ...] = get_args(VisionQuantizationName)

WeightSource = Callable[[str], torch.Tensor]
"""Full parameter name (`model.language_model.layers.0.mlp.up_proj.weight`) -> that tensor, in any float dtype."""

EMBEDDINGS = "model.language_model.embed_tokens"
LM_HEAD = "lm_head"


@dataclass
class QuantizationSummary:
    """What was swapped: layer counts and bytes before (fp32) and after, per part."""

    method: str
    vision: str
    kernels: dict[str, str] = field(default_factory=dict)
    num_layers: dict[str, int] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0

    def describe(self) -> str:
        parts = ", ".join(f"{part}: {self.num_layers[part]} layers via {self.kernels[part]}" for part in self.kernels)
        saved = f"; {self.bytes_before / 2**30:.2f} GiB -> {self.bytes_after / 2**30:.2f} GiB" if parts else ""
        return f"quantization={self.method}, vision={self.vision}: {parts or 'nothing quantised'}{saved}"


def check_quantization(method: str, vision: str = "none") -> None:
    """ValueError naming the choices when either setting is not one of them."""
    if method not in QUANTIZATION_NAMES:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_NAMES)}; got {method!r}")
    if vision not in VISION_QUANTIZATION_NAMES:
        raise ValueError(f"vision_quantization must be one of {', '.join(VISION_QUANTIZATION_NAMES)}; got {vision!r}")


def text_linear_names(model: nn.Module) -> list[str]:
    """Every nn.Linear of the text decoder layers (the LM head apart)."""
    layers = model.get_submodule("model.language_model.layers")
    return [f"model.language_model.layers.{name}" for name, module in layers.named_modules()
            if isinstance(module, nn.Linear)]


def vision_linear_names(model: nn.Module) -> list[str]:
    """Every nn.Linear of the vision tower (blocks, merger, DeepStack mergers)."""
    return [f"model.visual.{name}" for name, module in model.get_submodule("model.visual").named_modules()
            if isinstance(module, nn.Linear)]


def is_tied(model: nn.Module) -> bool:
    """Whether the LM head shares its weight with the embedding table."""
    head, embed = model.get_submodule(LM_HEAD).weight, model.get_submodule(EMBEDDINGS).weight
    return head is embed or (not head.is_meta and head.data_ptr() == embed.data_ptr()) or bool(
        getattr(model.config, "tie_word_embeddings", False) and head.is_meta and embed.is_meta)


def quantize_model(model: nn.Module, method: QuantizationName, vision: VisionQuantizationName = "none",
                   capability: tuple[int, int] | None = None,
                   weight_source: WeightSource | None = None,
                   on_cpu: Callable[[str], bool] | None = None) -> QuantizationSummary:
    """Quantise in place; `capability` is the CUDA GPU's (None on the CPU); `weight_source` feeds layers that are
    on the meta device; `on_cpu(module name)` says which layers of a split model run on the CPU (they get the
    CPU kernels). Returns what was done."""
    check_quantization(method, vision)
    summary = QuantizationSummary(method, vision)
    if method == "none" and vision == "none":
        return summary
    source = weight_source or _own_weights(model)

    def capability_of(name: str) -> tuple[int, int] | None:
        """The GPU's capability for a layer that runs there, None for one on the CPU (CPU kernels)."""
        return None if capability is None or (on_cpu is not None and on_cpu(name)) else capability
    if method != "none":
        tied = is_tied(model)
        # The head and the lookup table first, while little else is allocated: the full-precision table they are
        # made from (1.24 GB in fp32 for the 2B model) is the largest transient of the build, and is freed after.
        _swap_linear(model, LM_HEAD, method, capability_of, _tied_source(source) if tied else source, summary, "text")
        release_freed_memory()
        if capability_of(EMBEDDINGS) is None:
            _quantize_embeddings(model, source, summary)
        release_freed_memory()
        for index, name in enumerate(text_linear_names(model)):
            _swap_linear(model, name, method, capability_of, source, summary, "text")
            _trim_now_and_then(index)
        _untie(model)
    if vision != "none":
        for index, name in enumerate(vision_linear_names(model)):
            _swap_linear(model, name, vision, capability_of, source, summary, "vision")
            _trim_now_and_then(index)
    release_freed_memory()
    return summary


def _trim_now_and_then(index: int) -> None:
    if index % TRIM_EVERY == 0:
        release_freed_memory()


TRIM_EVERY = 8  # layers quantised between two returns of freed memory to the OS


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere). Each layer's
    full-precision weight and quantisation temporaries are freed as it is swapped, but glibc keeps the freed
    pages of its heaps resident: measured on the 2B model, that left the peak RSS up to 0.55 GiB above the
    quantised size, varying from run to run with where the temporaries landed."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _libc():
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None


def _own_weights(model: nn.Module) -> WeightSource:
    return lambda name: model.get_parameter(name)


def _tied_source(source: WeightSource) -> WeightSource:
    def read(name: str) -> torch.Tensor:
        return source(f"{EMBEDDINGS}.weight" if name == f"{LM_HEAD}.weight" else name)
    return read


def _swap_linear(model: nn.Module, name: str, method: str, capability_of: Callable[[str], tuple[int, int] | None],
                 source: WeightSource, summary: QuantizationSummary, part: str) -> None:
    linear = model.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        return  # already swapped
    capability = capability_of(name)
    dense = _dense(linear, name, source)
    if capability is None:
        if method == "int8":
            quantized, kernel = Int8DynamicLinear.from_linear(dense), "fbgemm int8 x int8-dynamic"
        elif Int4Avx2Linear.supports(linear) and int4_avx2_linear.kernel_available():
            quantized, kernel = Int4Avx2Linear.from_linear(dense), "vlray AVX2 int4 x int8-dynamic"
        elif pick_group_size(linear.in_features) is not None:
            quantized, kernel = Int4PackedLinear.from_linear(dense), "aten int4pack (bf16 activations)"
        else:
            return  # no int4 group divides K: this layer stays as it is
        after = quantized.nbytes()
    else:
        device = dense.weight.device if dense.weight.is_cuda else torch.device("cuda")
        if method == "int4":
            quantized = nf4_from_linear(dense, device, compute_dtype_for(capability))
            kernel = f"bitsandbytes NF4 ({str(compute_dtype_for(capability)).removeprefix('torch.')} compute)"
        else:
            quantized, kernel = int8_from_linear(dense, device, capability), "bitsandbytes LLM.int8"
        after = module_nbytes(quantized)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, quantized)
    summary.kernels[part] = kernel
    summary.num_layers[part] = summary.num_layers.get(part, 0) + 1
    summary.bytes_before += linear.in_features * linear.out_features * 4
    summary.bytes_after += after


def _dense(linear: nn.Linear, name: str, source: WeightSource) -> nn.Linear:
    """The layer itself, or (on the meta device) a stand-in holding its weights from the source."""
    if not linear.weight.is_meta:
        return linear
    dense = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    dense.weight = nn.Parameter(source(f"{name}.weight"), requires_grad=False)
    if linear.bias is not None:
        dense.bias = nn.Parameter(source(f"{name}.bias"), requires_grad=False)
    return dense


def _quantize_embeddings(model: nn.Module, source: WeightSource, summary: QuantizationSummary) -> None:
    """On the CPU the lookup table becomes int8 rows (the head no longer shares it)."""
    embed = model.get_submodule(EMBEDDINGS)
    if not isinstance(embed, nn.Embedding):
        return
    dtype = torch.float32 if embed.weight.is_meta else embed.weight.dtype
    if embed.weight.is_meta:
        table = nn.Embedding(embed.num_embeddings, embed.embedding_dim, embed.padding_idx, device="meta")
        table.weight = nn.Parameter(source(f"{EMBEDDINGS}.weight"), requires_grad=False)
        embed = table
    quantized = Int8Embedding.from_embedding(embed, dtype)
    model.get_submodule("model.language_model").embed_tokens = quantized
    summary.kernels["embeddings"] = "int8 rows"
    summary.num_layers["embeddings"] = 1
    summary.bytes_before += embed.num_embeddings * embed.embedding_dim * 4
    summary.bytes_after += quantized.nbytes()


def _untie(model: nn.Module) -> None:
    """The head has its own (quantised) weight now: keep transformers from tying the two again."""
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None and getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False
