"""Model presets as data (vlray/model/preset_data/*.json) and builders of models from them.

`qwen3_vl_2b_instruct` is the published Qwen3-VL-2B-Instruct config.json: built on the meta device it plans
memory without a byte of weights; built with random weights it gives speed figures without a download.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

PRESETS_DIR = Path(__file__).parent / "preset_data"
PRESET_NAMES = ("qwen3_vl_2b_instruct", "qwen3_vl_tiny")


def load_preset_dict(name: str) -> dict[str, Any]:
    """The raw JSON of a preset (names in PRESET_NAMES)."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no preset {name!r}; presets are {', '.join(PRESET_NAMES)}.")
    return json.loads(path.read_text())


def load_preset_config(name: str, **token_ids: int) -> Qwen3VLConfig:
    """A Qwen3VLConfig from a preset; `token_ids` (image_token_id=..., text vocab_size=...) override its ids."""
    data = load_preset_dict(name)
    vocab_size = token_ids.pop("vocab_size", None)
    data.update(token_ids)
    if vocab_size is not None:
        data["text_config"]["vocab_size"] = vocab_size
    return Qwen3VLConfig.from_dict(data)


def build_model(config: Qwen3VLConfig, device: str | torch.device = "meta",
                dtype: torch.dtype = torch.float32, seed: int = 0) -> Qwen3VLForConditionalGeneration:
    """Instantiate the model: on `meta` for shapes and counts only, elsewhere with seeded random weights."""
    # The published config says `"dtype": "bfloat16"` in text_config, and transformers builds that sub-model in
    # it whatever the default dtype is: pin every part to the dtype asked for.
    config = copy.deepcopy(config)
    for part in (config, config.text_config, config.vision_config):
        part.dtype = dtype
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters counted once each (tied embeddings are one tensor)."""
    return sum(p.numel() for p in model.parameters())


def kv_cache_bytes_per_token(config: Qwen3VLConfig, bytes_per_value: int = 2) -> int:
    """K and V for every layer: 28 x 2 x 8 heads x 128 x 2 bytes = 112 KiB per token for the 2B model."""
    text = config.text_config
    return text.num_hidden_layers * 2 * text.num_key_value_heads * text.head_dim * bytes_per_value
