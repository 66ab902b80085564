"""Request -> PreparedRequest: validate, decode images, apply the chat template, tokenize, check the context.

This is the CPU side of the pipeline; it needs the processor but not the model, so batch jobs run it on CPU
actors apart from the GPU workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from transformers import ProcessorMixin

from vlray.cache.keys import BlobCache
from vlray.inputs.image_input import load_image
from vlray.inputs.image_policy import ImagePolicy
from vlray.inputs.prepared_request import PreparedRequest, SamplingParams
from vlray.inputs.preprocessed_image_cache import PreprocessedImageCache, tokenize_with_images
from vlray.schema import GenerationRequest, ImageSource, RequestError, parse_request


class RequestPreprocessor:
    """Turns requests into model-ready token ids and image patches, one request at a time."""

    def __init__(self, processor: ProcessorMixin, max_model_len: int, default_max_tokens: int,
                 max_input_pixels: int, local_image_root: Path | None = None,
                 image_policy: ImagePolicy | None = None, image_cache: BlobCache | None = None) -> None:
        """`image_policy` says which image sources requests may use (default: local files, anywhere or under
        `local_image_root`; no http); give one or the other. `image_cache` keeps preprocessed images."""
        if image_policy is not None and local_image_root is not None:
            raise ValueError("give local_image_root or image_policy (with its local_root), not both")
        self.processor = processor
        self.max_model_len = max_model_len
        self.default_max_tokens = default_max_tokens
        self.max_input_pixels = max_input_pixels
        self.image_policy = image_policy or ImagePolicy(local_root=local_image_root)
        # With a cache, images are processed one by one through it (a hit is never decoded); without, in one call.
        self.image_cache = (PreprocessedImageCache(processor, image_cache, max_input_pixels, self.image_policy)
                            if image_cache is not None else None)

    def prepare(self, raw: GenerationRequest | dict[str, Any]) -> PreparedRequest:
        """Preprocess one request; raises RequestError (with a kind) when its input is bad."""
        request = parse_request(raw)
        hf_messages, sources = to_hf_messages(request)
        text = self.processor.apply_chat_template(hf_messages, tokenize=False, add_generation_prompt=True)
        if self.image_cache is not None and sources:
            images = self.image_cache.load(sources)
            grids = np.concatenate([im.image_grid_thw for im in images])
            input_ids, mm_types = tokenize_with_images(self.processor, text, grids)
            pixel_values: np.ndarray | None = np.concatenate([im.pixel_values for im in images])
            hashes = [im.content_hash for im in images]
        else:
            loaded = [load_image(src, self.max_input_pixels, self.image_policy) for src in sources]
            try:
                encoded = self.processor(text=[text], images=[im.image for im in loaded] or None,
                                         return_tensors="np")
            except ValueError as exc:  # e.g. smart_resize refusing a shape
                raise RequestError(f"image preprocessing failed: {exc}", kind="invalid_image") from None
            input_ids = np.asarray(encoded["input_ids"][0], dtype=np.int64)
            hashes = [im.content_hash for im in loaded]
            mm_types, pixel_values, grids = None, None, None
            if loaded:
                mm_types = np.asarray(encoded["mm_token_type_ids"][0], dtype=np.int32)
                pixel_values = np.ascontiguousarray(encoded["pixel_values"], dtype=np.float32)
                grids = np.asarray(encoded["image_grid_thw"], dtype=np.int64)
        num_tokens = int(input_ids.shape[0])
        if num_tokens >= self.max_model_len:
            raise RequestError(
                f"prompt is {num_tokens} tokens, over the model's context of {self.max_model_len} tokens "
                "(shorten the text, send fewer images or lower max_pixels)", kind="context_overflow")
        wanted = request.max_tokens or self.default_max_tokens
        sampling = SamplingParams(
            # Past the context there is no room to generate: the request ends with finish_reason "length".
            max_tokens=min(wanted, self.max_model_len - num_tokens),
            temperature=request.temperature, top_p=request.top_p, seed=request.seed, stop=list(request.stop))
        if pixel_values is None:
            return PreparedRequest(request.id, input_ids, sampling)
        return PreparedRequest(
            request_id=request.id,
            input_ids=input_ids,
            sampling=sampling,
            mm_token_type_ids=mm_types,
            pixel_values=pixel_values,
            image_grid_thw=grids,
            image_hashes=hashes,
        )


def to_hf_messages(request: GenerationRequest) -> tuple[list[dict[str, Any]], list[ImageSource]]:
    """The chat in transformers' format ({"type": "image"} placeholders) and the image sources, in order."""
    if request.messages is None:
        prompt = request.prompt or ""
        if not prompt.strip():
            raise RequestError("prompt is empty", kind="empty_prompt")
        content = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": prompt}]
        return [{"role": "user", "content": content}], list(request.images)

    if not request.messages:
        raise RequestError("messages is empty", kind="empty_prompt")
    messages: list[dict[str, Any]] = []
    sources: list[ImageSource] = []
    has_user_input = False
    for message in request.messages:
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
            has_user_input |= message.role == "user" and bool(message.content.strip())
            continue
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if part.type == "text":
                parts.append({"type": "text", "text": part.text})
                has_user_input |= message.role == "user" and bool(part.text.strip())
            else:
                if message.role != "user":
                    raise RequestError(f"images are only accepted in user messages, not {message.role}",
                                       kind="invalid_request")
                parts.append({"type": "image"})
                sources.append(part.image_url.url)
                has_user_input = True
        messages.append({"role": message.role, "content": parts})
    if not has_user_input:
        raise RequestError("no user message with text or images", kind="empty_prompt")
    return messages, sources
