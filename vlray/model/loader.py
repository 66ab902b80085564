"""Load a Qwen3-VL model and its processor with transformers' own classes, on the profile's device and dtype."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, PreTrainedModel, ProcessorMixin
from transformers.image_utils import SizeDict
from transformers.utils import logging as hf_logging

from vlray.cache.keys import BlobCache
from vlray.config import EngineConfig
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.model.device_profile import DeviceProfile, detect_profile
from vlray.model.fp16_residual import keep_residual_in_fp32
from vlray.model.generation_defaults import sampling_defaults
from vlray.model.placement import DeviceMoves, ModelPlacement, place_model
from vlray.model.plan_command import log_device_plan
from vlray.model.quantization.quantized_loading import load_quantized
from vlray.model.source import model_fingerprint, resolve_model_dir
from vlray.model.split_loading import choose_placement, load_split
from vlray.model.weights_cache import load_pretrained, load_with_weights_cache

log = logging.getLogger(__name__)


class ChatTemplateMissingError(ValueError):
    """The model folder has no chat template anywhere transformers looks for one."""


@dataclass
class LoadedModel:
    """A model on its device with the processor that feeds it, and the facts generation needs."""

    model: PreTrainedModel
    processor: ProcessorMixin
    profile: DeviceProfile
    fingerprint: str
    max_model_len: int
    eos_token_ids: list[int]
    pad_token_id: int
    model_dir: Path | None = None
    placement: ModelPlacement | None = None
    """Where each component runs; None (set to everything on the profile's device) when nothing is split."""
    moves: DeviceMoves = field(default_factory=DeviceMoves)
    """The crossings between the placement's sides, counted (all zero unless the model is split)."""

    def __post_init__(self) -> None:
        if self.placement is None:
            self.placement = ModelPlacement.single(self.profile.device, self.profile.dtype)

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def load_processor(model_dir: Path | str, max_pixels: int, min_pixels: int | None = None) -> ProcessorMixin:
    """AutoProcessor from the folder, its image sizing capped at max_pixels (and floored at min_pixels)."""
    processor = AutoProcessor.from_pretrained(str(model_dir))
    cap_image_pixels(processor, max_pixels, min_pixels)
    ensure_chat_template(processor, model_dir)
    return processor


def ensure_chat_template(processor: ProcessorMixin, model_dir: Path | str) -> None:
    """Give the processor its tokenizer's template when it has none of its own (older exports keep it only in
    tokenizer_config.json, where plain transformers users get it from); refuse a folder with none at all."""
    if getattr(processor, "chat_template", None):
        return
    template = getattr(processor.tokenizer, "chat_template", None)
    if not template:
        raise ChatTemplateMissingError(
            f"the model folder {model_dir} has no chat template: none in chat_template.jinja or chat_template.json "
            "beside the processor files, and no `chat_template` in tokenizer_config.json. Add the model's template "
            "(Qwen3-VL's is chat_template.jinja in the published repository).")
    processor.chat_template = template


def cap_image_pixels(processor: ProcessorMixin, max_pixels: int, min_pixels: int | None = None) -> None:
    """Keep the model's own resize bounds, lowered to max_pixels; min_pixels (if given) replaces the floor."""
    size = processor.image_processor.size
    longest = min(size.longest_edge or max_pixels, max_pixels)
    shortest = min(min_pixels if min_pixels is not None else (size.shortest_edge or 0), longest)
    processor.image_processor.size = SizeDict(longest_edge=longest, shortest_edge=shortest)


def load_preprocessor(config: EngineConfig, image_cache: BlobCache | None = None) -> RequestPreprocessor:
    """The CPU side alone (processor and context length, no weights), for preprocessing actors; with
    `image_cache`, preprocessed images are looked up there first."""
    model_dir = resolve_model_dir(config.model)
    processor = load_processor(model_dir, config.max_pixels, config.min_pixels)
    context = AutoConfig.from_pretrained(str(model_dir)).text_config.max_position_embeddings
    max_model_len = min(config.max_model_len, context) if config.max_model_len else context
    return RequestPreprocessor(processor, max_model_len, config.default_max_tokens, config.max_input_pixels,
                               image_cache=image_cache if config.uses_preprocessed_cache else None,
                               max_images_per_request=config.max_images_per_request,
                               max_request_chars=config.max_request_chars,
                               sampling_defaults=sampling_defaults(model_dir, config.sampling_defaults))


def load_model(config: EngineConfig, profile: DeviceProfile | None = None) -> LoadedModel:
    """Resolve the folder, pick the device profile, load weights in the profile's dtype onto its device."""
    model_dir = resolve_model_dir(config.model)
    profile = profile or detect_profile(config.device_profile, config.dtype, config.device_index)
    processor = load_processor(model_dir, config.max_pixels, config.min_pixels)
    hf_logging.disable_progress_bar()
    log.info("loading %s on %s", model_dir, profile.describe())
    fingerprint = model_fingerprint(model_dir)
    model_config = AutoConfig.from_pretrained(str(model_dir))
    plan = log_device_plan(model_config, model_dir, profile, config.quantization, config.max_pixels, log)
    placement = choose_placement(config, profile, plan, model_config)
    if placement.is_split:
        model = load_split(model_dir, profile, config, placement)
    elif config.quantization != "none" or config.vision_quantization != "none":
        model = load_quantized(model_dir, profile, config.quantization, config.vision_quantization)
    elif config.uses_weights_cache:
        model, how = load_with_weights_cache(model_dir, profile, config.resolved_cache_dir(), fingerprint)
        log.info("weights %s", how)
    else:
        model = load_pretrained(model_dir, profile)
    return wrap_model(model.eval(), processor, profile, config, model_dir, fingerprint, placement)


def wrap_model(model: PreTrainedModel, processor: ProcessorMixin, profile: DeviceProfile, config: EngineConfig,
               model_dir: Path | None = None, fingerprint: str = "in-memory",
               placement: ModelPlacement | None = None) -> LoadedModel:
    """A LoadedModel around objects already built (the benchmark's random full-size model, for one); a split
    `placement` moves the components to their sides and hooks the boundaries."""
    moves = DeviceMoves()
    if placement is not None and placement.is_split:
        place_model(model, placement, moves)
        log.info("placement: %s", placement.describe(model.config.text_config.num_hidden_layers))
    keep_residual_in_fp32(model)  # fp16 weights (Pascal) would overflow Qwen's residual stream
    tokenizer = processor.tokenizer
    eos = model.generation_config.eos_token_id
    eos_ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    context = model.config.text_config.max_position_embeddings
    max_model_len = min(config.max_model_len, context) if config.max_model_len else context
    return LoadedModel(model, processor, profile, fingerprint, max_model_len, eos_ids, int(pad), model_dir,
                       placement, moves)


def set_cpu_threads(num_threads: int | None) -> None:
    """Ray sets OMP_NUM_THREADS=1 in workers; give torch the CPUs the worker was granted instead."""
    if num_threads:
        torch.set_num_threads(num_threads)
