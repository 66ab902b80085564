"""Plain transformers, one request at a time: the baseline every optimised path is checked and timed against.

It goes through transformers' own `apply_chat_template(tokenize=True)` with the images inside the messages,
then `model.generate` greedily, so it shares none of vlray's preprocessing, batching or cutting code.
"""

from __future__ import annotations

from typing import Any

import torch

from vlray.inputs.image_input import load_image
from vlray.inputs.preprocessor import to_hf_messages
from vlray.model.loader import LoadedModel
from vlray.schema import GenerationRequest, parse_request


def reference_generate(loaded: LoadedModel, raw: GenerationRequest | dict[str, Any],
                       default_max_tokens: int) -> list[int]:
    """New token ids for one request by plain greedy `generate` (EOS included when it ends with one)."""
    request = parse_request(raw)
    messages, sources = to_hf_messages(request)
    images = iter([load_image(src, max_input_pixels=10**9).image for src in sources])
    for message in messages:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part["type"] == "image":
                    part["image"] = next(images)
    inputs = loaded.processor.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    inputs = {k: v.to(loaded.profile.device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.profile.dtype)
    prompt_len = inputs["input_ids"].shape[1]
    max_new = min(request.max_tokens or default_max_tokens, loaded.max_model_len - prompt_len)
    with torch.inference_mode():
        output = loaded.model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
    return output[0, prompt_len:].tolist()
