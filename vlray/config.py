"""Engine configuration: one frozen dataclass, validated on creation.

It is the one definition of every engine knob: the server's arguments (vlray/serving/server_config.py) and the
batch job's flags (actors/data/batch_job.py) are derived from its fields, types, defaults and docstrings
(vlray/config_fields.py). A new field needs a one-line docstring under it, and a type those surfaces can parse
(bool, int, float, str, a Literal, or one of them | None). Ray settings live in actors/, not here."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import platformdirs

DeviceProfileName = Literal["auto", "cpu", "sm61", "modern"]
BackendName = Literal["engine", "hf"]
DTypeName = Literal["float32", "float16", "bfloat16"]
QuantizationName = Literal["none", "int8", "int4"]
VisionQuantizationName = Literal["none", "int8"]
SamplingDefaultsName = Literal["model", "vlray"]

# 1024x1024 pixels is 1024 visual tokens (32x32 pixels per token after the 2x2 merge): a 4000x3000 photo is
# resized to about 1184x896 instead of costing 11,700 tokens and gigabytes of activations.
DEFAULT_MAX_PIXELS = 1024 * 1024
# Images above this are refused before decoding: 8000x6000 (48 MP) is an error, 6000x4000 (24 MP) is decoded
# and resized. It bounds the memory one request can make a worker decode.
DEFAULT_MAX_INPUT_PIXELS = 36_000_000
# Bounds of one request's input, checked before anything is decoded, fetched or tokenised: 16 images of a
# megapixel are ~16k visual tokens already; a million characters is over 200k tokens of any tokenizer.
DEFAULT_MAX_IMAGES_PER_REQUEST = 16
DEFAULT_MAX_REQUEST_CHARS = 1_000_000
GiB = 1024**3
# An image's vision-encoder output is ~16 KiB per visual token for Qwen3-VL-2B in 16 bits (embeddings plus three
# DeepStack layers): 1 GiB hot holds ~64 one-megapixel images, the disk tiers ~25 times that.
DEFAULT_CACHE_HOT_BYTES = 1 * GiB
DEFAULT_CACHE_WARM_BYTES = 8 * GiB
DEFAULT_CACHE_COLD_BYTES = 16 * GiB
CACHE_DIR_ENV = "VLRAY_CACHE_DIR"


def default_cache_dir() -> Path:
    """$VLRAY_CACHE_DIR, else the user's cache folder (~/.cache/vlray on Linux), on the machine that asks."""
    return Path(os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir("vlray")).expanduser()


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything a ModelWorker needs to load a model and serve requests."""

    model: str
    """A local Hugging Face folder, or a hub id found in the local Hugging Face cache."""
    backend: BackendName = "engine"
    """`engine`: continuous batching over a paged KV cache; `hf`: static batches through transformers
    `generate` (the reference every optimisation is checked against)."""
    device_profile: DeviceProfileName = "auto"
    """`auto` picks `cpu`, `sm61` (Pascal) or `modern` from the GPU found."""
    dtype: DTypeName | None = None
    """Override of the profile's dtype (for example bfloat16 on a CPU with AVX512-BF16)."""
    device_index: int = 0
    """Which GPU of the machine (or of those Ray gave the worker) the model goes on."""
    quantization: QuantizationName = "none"
    """The text decoder's linear layers and the LM head: `int8` (CPU: fbgemm int8 x int8; CUDA sm75+: LLM.int8)
    or `int4` (CPU: PyTorch's int4 kernel, bf16 activations; CUDA, Pascal included: bitsandbytes NF4)."""
    vision_quantization: VisionQuantizationName = "none"
    """The vision tower's linear layers: `int8` on the CPU (fbgemm), where prefill of images is compute-bound."""
    gpu_layers: int | None = None
    """On CUDA: how many decoder layers run on the GPU, the rest (and the LM head) on the CPU in fp32, like
    llama.cpp's `-ngl`; None: the device plan decides from the GPU's free memory (all of them when they fit)."""
    vision_on_cpu: bool | None = None
    """On CUDA: run the vision tower on the CPU in fp32 (its outputs are copied to the GPU); None: the device
    plan decides (the CPU when the tower and its activations do not fit beside the decoder)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Cap on an image's pixels after resizing (the model's own setting applies when lower)."""
    min_pixels: int | None = None
    """Floor on an image's pixels after resizing; None keeps the model's own setting (capped by max_pixels)."""
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    """Images with more pixels than this are refused before they are decoded."""
    max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST
    """Images one request may carry; more is refused before any of them is decoded or fetched."""
    max_request_chars: int = DEFAULT_MAX_REQUEST_CHARS
    """Text characters one request may carry (all its messages together); more is refused before tokenising."""
    max_model_len: int | None = None
    """Prompt plus generated tokens; None uses the model's max_position_embeddings."""
    default_max_tokens: int = 256
    """max_tokens of a request that gives none."""
    sampling_defaults: SamplingDefaultsName = "model"
    """Sampling fields a request leaves unset: `model` takes the model folder's generation_config.json (as vLLM
    does); `vlray`: greedy (temperature 0), no top_k/top_p/min_p, no penalties."""
    max_batch_tokens: int = 8192
    """Token budget. hf: of one static batch, rows x (longest prompt + most new tokens), padding included;
    engine: of one step, prompt tokens prefilled plus one per decoding request."""
    max_batch_size: int = 32
    """Rows: of one static batch (hf), or decoding together (engine). The server's and the batch job's default
    too: the token budget and the KV cache bound memory, so this only caps how many rows share a step."""
    bucket_static_batches: bool = True
    """hf: cut static batches by kind and prompt length (False: in arrival order, kinds mixed)."""
    kv_cache_bytes: int | None = None
    """engine: memory for the KV cache; None: a share of the GPU memory free after loading, or 2 GiB on CPU."""
    kv_cache_memory_fraction: float = 0.8
    """engine on CUDA: the share of free GPU memory the KV cache takes when kv_cache_bytes is None."""
    block_size: int = 16
    """engine: tokens per KV-cache block (the unit of allocation and of prefix sharing)."""
    enable_prefix_caching: bool = True
    """engine: requests that share a prefix (system prompt, same image) reuse its K/V."""
    cuda_graphs: bool = True
    """engine on CUDA: replay captured decode steps instead of launching every kernel each token."""
    num_threads: int | None = None
    """torch intra-op threads on CPU; None lets the worker use the CPUs Ray gave it."""
    cache: bool = True
    """Master switch of every cache below (`--no-cache` sets it False)."""
    cache_dir: str | None = None
    """Folder of the disk tiers and the weights cache; None: default_cache_dir() on each machine."""
    cache_encoder_outputs: bool = True
    """Cache vision-encoder outputs (image embeddings and DeepStack features) by image content."""
    cache_preprocessed_images: bool = True
    """Cache preprocessed images (pixel patches and grid) by image content."""
    cache_weights: bool = True
    """Keep the weights converted to the device profile's dtype on disk, and load those next time."""
    cache_hot_bytes: int = DEFAULT_CACHE_HOT_BYTES
    """Budget of the hot tier (memory; Ray's object store under a CacheActor)."""
    cache_warm_bytes: int = DEFAULT_CACHE_WARM_BYTES
    """Budget of the warm tier (files under cache_dir)."""
    cache_cold_bytes: int = DEFAULT_CACHE_COLD_BYTES
    """Budget of the cold tier (zstd files under cache_dir)."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("EngineConfig.model is empty: give a local model folder or a hub id such as "
                             "Qwen/Qwen3-VL-2B-Instruct.")
        if self.backend not in ("engine", "hf"):
            raise ValueError(f"backend={self.backend!r}: use engine (continuous batching) or hf (transformers "
                             "generate).")
        if self.device_profile not in ("auto", "cpu", "sm61", "modern"):
            raise ValueError(f"device_profile={self.device_profile!r}: use one of auto, cpu, sm61, modern.")
        if self.dtype not in (None, "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r}: use float32, float16 or bfloat16 (or leave it unset).")
        if self.gpu_layers is not None and not 0 <= self.gpu_layers <= 1 << 20:
            raise ValueError(f"gpu_layers={self.gpu_layers!r}: give 0 or more decoder layers (or leave it unset).")
        if self.quantization not in ("none", "int8", "int4"):
            raise ValueError(f"quantization={self.quantization!r}: use none, int8 or int4.")
        if self.vision_quantization not in ("none", "int8"):
            raise ValueError(f"vision_quantization={self.vision_quantization!r}: use none or int8.")
        if self.sampling_defaults not in ("model", "vlray"):
            raise ValueError(f"sampling_defaults={self.sampling_defaults!r}: use model (the model folder's "
                             "generation_config.json) or vlray (greedy).")
        _require_positive("max_pixels", self.max_pixels)
        _require_positive("max_input_pixels", self.max_input_pixels)
        _require_positive("max_images_per_request", self.max_images_per_request)
        _require_positive("max_request_chars", self.max_request_chars)
        _require_positive("default_max_tokens", self.default_max_tokens)
        _require_positive("max_batch_tokens", self.max_batch_tokens)
        _require_positive("max_batch_size", self.max_batch_size)
        if self.min_pixels is not None:
            _require_positive("min_pixels", self.min_pixels)
            if self.min_pixels > self.max_pixels:
                raise ValueError(f"min_pixels={self.min_pixels} is above max_pixels={self.max_pixels}: "
                                 "lower min_pixels or raise max_pixels.")
        if self.max_model_len is not None:
            _require_positive("max_model_len", self.max_model_len)
            if self.max_model_len < 2:
                raise ValueError(f"max_model_len={self.max_model_len} leaves no room for a prompt and a new token: "
                                 "give 2 or more (or leave it unset for the model's own).")
        _require_positive("block_size", self.block_size)
        if self.kv_cache_bytes is not None:
            _require_positive("kv_cache_bytes", self.kv_cache_bytes)
        if not 0.0 < self.kv_cache_memory_fraction <= 1.0:
            raise ValueError(f"kv_cache_memory_fraction={self.kv_cache_memory_fraction} must be in (0, 1].")
        if self.num_threads is not None:
            _require_positive("num_threads", self.num_threads)
        if self.device_index < 0:
            raise ValueError(f"device_index={self.device_index} must be 0 or more.")
        for name in ("cache_hot_bytes", "cache_warm_bytes", "cache_cold_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be a whole number of bytes, 0 or more (0 turns the tier "
                                 "off).")

    @property
    def uses_encoder_cache(self) -> bool:
        return self.cache and self.cache_encoder_outputs

    @property
    def uses_preprocessed_cache(self) -> bool:
        return self.cache and self.cache_preprocessed_images

    @property
    def uses_content_cache(self) -> bool:
        """Whether a store of images or encoder outputs is needed at all."""
        return self.uses_encoder_cache or self.uses_preprocessed_cache

    @property
    def uses_weights_cache(self) -> bool:
        return self.cache and self.cache_weights

    def resolved_cache_dir(self) -> Path:
        """cache_dir, or the default folder of this machine."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def with_updates(self, **changes: Any) -> "EngineConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive whole number.")
