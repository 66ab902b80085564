"""Quantised linear layers for the CPU (fbgemm int8; int4 by vlray's AVX2 kernel, else aten's) and CUDA
(bitsandbytes NF4, LLM.int8)."""

from vlray.model.quantization.int4_avx2_linear import Int4Avx2Linear
from vlray.model.quantization.int4_packed_linear import Int4PackedLinear
from vlray.model.quantization.int8_dynamic_linear import Int8DynamicLinear
from vlray.model.quantization.int8_embedding import Int8Embedding
from vlray.model.quantization.quantize_model import (
    QUANTIZATION_NAMES,
    VISION_QUANTIZATION_NAMES,
    QuantizationName,
    QuantizationSummary,
    VisionQuantizationName,
    check_quantization,
    quantize_model,
)

__all__ = [
    "QUANTIZATION_NAMES", "VISION_QUANTIZATION_NAMES", "Int4Avx2Linear", "Int4PackedLinear", "Int8DynamicLinear", "Int8Embedding",
    "QuantizationName", "QuantizationSummary", "VisionQuantizationName", "check_quantization", "quantize_model",
]
