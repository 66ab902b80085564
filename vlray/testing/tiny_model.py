"""Build a tiny, seeded, randomly initialised Qwen3-VL in Hugging Face format, for tests and the demo.

Everything is real transformers machinery: a byte-level BPE tokenizer trained here with Qwen's special tokens,
Qwen3-VL's image and video processors with the published image settings, a chat template in Qwen3-VL's format,
and Qwen3VLForConditionalGeneration weights in safetensors. The Auto classes load the folder offline.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.utils import logging as hf_logging

from vlray.model.presets import PRESETS_DIR, build_model, load_preset_config, load_preset_dict

# Qwen's special tokens, in Qwen's order (their ids differ from the real model's, which is fine: the config's
# token ids are written from this tokenizer).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
"""Added after the special tokens, as Qwen's tokenizer has them: added but not special, so decoding keeps them and
a tool call reaches the server's parser."""
TOKENIZER_VOCAB_SIZE = 1024

_WORDS = (
    "the a an this that image picture photo of in on at with and or is are was what where who how many which "
    "describe caption read text say show shows see color red green blue yellow black white gray orange purple "
    "cat dog car tree house sky road sign person people street city table chair cup book screen window door "
    "left right top bottom center small large big little one two three four five six seven eight nine ten "
    "there here it its they them please answer question briefly detail details count objects scene document "
    "page number numbers word words line lines chart graph table title label value values total price date "
    "name list first second last next before after above below near far background foreground shape circle "
    "square triangle square stripe pattern gradient light dark bright"
).split()


def _training_corpus(seed: int) -> list[str]:
    """Deterministic English-like sentences, digits and punctuation: enough for a byte-level BPE to learn merges."""
    rng = random.Random(seed)
    lines = []
    for _ in range(4000):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2025)))
        sentence = " ".join(words)
        lines.append(sentence[0].upper() + sentence[1:] + rng.choice([".", "?", "!", ",", ":"]))
    return lines


def build_tokenizer(seed: int = 0) -> Qwen2Tokenizer:
    """Train Qwen2's byte-level BPE pipeline (same pre-tokenizer regex) on the corpus, with Qwen's special tokens."""
    base = Qwen2Tokenizer()
    tokenizer = base.train_new_from_iterator(
        _training_corpus(seed), vocab_size=TOKENIZER_VOCAB_SIZE, new_special_tokens=SPECIAL_TOKENS,
        show_progress=False)
    tokenizer.add_tokens(TOOL_TOKENS)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen3VLProcessor:
    """Qwen3-VL's processor around the tokenizer, with the published image settings and the chat template."""
    image_settings = {k: v for k, v in load_preset_dict("qwen3_vl_image_processor").items() if not k.startswith("_")}
    video_settings = {k: v for k, v in image_settings.items() if k != "size"}
    chat_template = (PRESETS_DIR / "qwen3_vl_chat_template.jinja").read_text()
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**image_settings),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**video_settings),
        chat_template=chat_template,
    )


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny model folder (config, safetensors weights, tokenizer, processor, chat template)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    config = load_preset_config("qwen3_vl_tiny", vocab_size=len(tokenizer), **ids)
    eos_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    config.text_config.eos_token_id = eos_ids[0]
    config.text_config.pad_token_id = tokenizer.pad_token_id

    model = build_model(config, device="cpu", dtype=torch.float32, seed=seed)
    hf_logging.disable_progress_bar()
    # Greedy decoding, as plain `generate` does when the folder says nothing else.
    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id, bos_token_id=None, do_sample=False)
    model.save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    return out
