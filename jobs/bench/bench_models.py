"""Models for benchmarks: the tiny model from its folder, or the full-size 2B config with random weights."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Qwen3VLConfig

from vlray.config import EngineConfig
from vlray.model.device_profile import detect_profile
from vlray.model.loader import LoadedModel, load_model, load_processor, wrap_model
from vlray.model.presets import build_model, load_preset_config
from vlray.testing.tiny_model import build_tiny_model


def tiny_model_dir(cache: Path | None = None) -> Path:
    """A tiny model folder, built once under `cache` (default: a temporary folder)."""
    folder = (cache or Path(tempfile.mkdtemp(prefix="vlray-bench-"))) / "tiny-qwen3-vl"
    if not (folder / "config.json").is_file():
        build_tiny_model(folder)
    return folder


def load_bench_model(size: str, config: EngineConfig, tiny_dir: Path) -> tuple[LoadedModel, float]:
    """(model, seconds to build or load). `2b`: Qwen3-VL-2B's config, random weights, the tiny tokenizer."""
    start = time.perf_counter()
    if size == "tiny":
        return load_model(config), time.perf_counter() - start
    if size != "2b":
        raise ValueError(f"unknown model size {size!r}: tiny or 2b")
    profile = detect_profile(config.device_profile, config.dtype, config.device_index)
    processor = load_processor(tiny_dir, config.max_pixels, config.min_pixels)
    tokenizer = processor.tokenizer
    model = build_model(two_b_config(tokenizer), device=profile.device, dtype=profile.dtype)
    model.config._attn_implementation = "sdpa"
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    loaded = wrap_model(model, processor, profile, config, fingerprint="random-2b")
    return loaded, time.perf_counter() - start


def two_b_config(tokenizer: PreTrainedTokenizerBase) -> Qwen3VLConfig:
    """Qwen3-VL-2B's config with the special token ids of the tiny tokenizer (all its ids fit the 2B vocabulary)."""
    return load_preset_config("qwen3_vl_2b_instruct", **{
        name: tokenizer.convert_tokens_to_ids(token) for name, token in [
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]})


def set_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)
