"""Request -> PreparedRequest: validate, decode images, apply the chat template, tokenize, check the context.

This is the CPU side of the pipeline; it needs the processor but not the model, so batch jobs run it on CPU
actors apart from the GPU workers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from transformers import ProcessorMixin

from vlray.cache.keys import BlobCache
from vlray.config import DEFAULT_MAX_IMAGES_PER_REQUEST, DEFAULT_MAX_REQUEST_CHARS
from vlray.inputs.image_input import load_image
from vlray.inputs.image_policy import ImagePolicy
from vlray.inputs.prepared_request import PreparedRequest, SamplingParams, StructuredOutput
from vlray.inputs.preprocessed_image_cache import PreprocessedImageCache, tokenize_with_images
from vlray.inputs.resized_image import patchify, resize_image
from vlray.schema import GenerationRequest, ImageSource, RequestError, parse_request


class RequestPreprocessor:
    """Turns requests into model-ready token ids and image patches, one request at a time."""

    def __init__(self, processor: ProcessorMixin, max_model_len: int, default_max_tokens: int,
                 max_input_pixels: int, local_image_root: Path | None = None,
                 image_policy: ImagePolicy | None = None, image_cache: BlobCache | None = None,
                 max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST,
                 max_request_chars: int = DEFAULT_MAX_REQUEST_CHARS,
                 sampling_defaults: Mapping[str, Any] | None = None) -> None:
        """`image_policy` says which image sources requests may use (default: local files, anywhere or under
        `local_image_root`; no http); give one or the other. `image_cache` keeps preprocessed images. The two
        limits bound one request's input before anything costly is done with it. `sampling_defaults`: the
        values of the sampling fields a request leaves unset (vlray/model/generation_defaults.py)."""
        if image_policy is not None and local_image_root is not None:
            raise ValueError("give local_image_root or image_policy (with its local_root), not both")
        self.processor = processor
        self.max_model_len = max_model_len
        self.default_max_tokens = default_max_tokens
        self.max_input_pixels = max_input_pixels
        self.image_policy = image_policy or ImagePolicy(local_root=local_image_root)
        self.max_images_per_request = max_images_per_request
        self.max_request_chars = max_request_chars
        self.sampling_defaults = dict(sampling_defaults or {})
        # No token decodes to more characters than the longest entry of the vocabulary (byte-level entries hold
        # one character per byte): a text longer than max_model_len of those cannot fit, whatever it says.
        self.max_chars_per_token = max(map(len, processor.tokenizer.get_vocab()), default=1) or 1
        self.image_cache = (PreprocessedImageCache(processor, image_cache, max_input_pixels, self.image_policy)
                            if image_cache is not None else None)

    def prepare(self, raw: GenerationRequest | dict[str, Any], make_patches: bool = True) -> PreparedRequest:
        """Preprocess one request; raises RequestError (with a kind) when its input is bad.

        `make_patches=False` leaves its images resized but not yet patches (`images`, uint8): the batch job's
        preprocess actors ship that, 8x smaller, and its model actors make the patches (with_pixel_values)."""
        request = parse_request(raw)
        structured = structured_output_of(request.response_format)  # refused before anything costly
        hf_messages, sources = to_hf_messages(request)
        self._check_size(hf_messages, sources)
        text = (self.processor.apply_chat_template(hf_messages, tools=request.tools, tokenize=False,
                                                   add_generation_prompt=True)
                if request.chat_template else hf_messages[0]["content"][0]["text"])
        if len(text) > self.max_model_len * self.max_chars_per_token:
            raise RequestError(
                f"prompt is {len(text)} characters, at least {len(text) // self.max_chars_per_token} tokens: over "
                f"the model's context of {self.max_model_len} tokens (shorten the text)", kind="context_overflow")
        # With a cache, an image seen before is neither decoded nor resized; without, each is done here.
        images = (self.image_cache.load(sources) if self.image_cache is not None else
                  [resize_image(self.processor, im.image, im.content_hash)
                   for im in (load_image(src, self.max_input_pixels, self.image_policy) for src in sources)])
        if images:
            grids = np.concatenate([im.image_grid_thw for im in images])
            input_ids, mm_types = tokenize_with_images(self.processor, text, grids)
        else:
            input_ids = np.asarray(self.processor(text=[text], return_tensors="np")["input_ids"][0], dtype=np.int64)
        num_tokens = int(input_ids.shape[0])
        if num_tokens >= self.max_model_len:
            raise RequestError(
                f"prompt is {num_tokens} tokens, over the model's context of {self.max_model_len} tokens "
                "(shorten the text, send fewer images or lower max_pixels)", kind="context_overflow")
        sampling = self.sampling_params(request, num_tokens, structured)
        if not images:
            return PreparedRequest(request.id, input_ids, sampling)
        pixels = [im.pixels for im in images]
        return PreparedRequest(
            request_id=request.id,
            input_ids=input_ids,
            sampling=sampling,
            mm_token_type_ids=mm_types,
            pixel_values=patchify(self.processor, pixels) if make_patches else None,
            image_grid_thw=grids,
            image_hashes=[im.content_hash for im in images],
            images=[] if make_patches else pixels,
        )

    def sampling_params(self, request: GenerationRequest, num_prompt_tokens: int,
                        structured: StructuredOutput | None = None) -> SamplingParams:
        """The request's sampling fields, those it leaves unset from the defaults; RequestError naming a bad one.
        `structured`: its response_format, already checked (structured_output_of)."""
        wanted = request.max_tokens or self.default_max_tokens
        fields = {name: getattr(request, name) for name in SAMPLING_FIELDS}
        fields = {name: self.sampling_defaults.get(name) if value is None else value for name, value in fields.items()}
        try:
            return SamplingParams(
                # Past the context there is no room to generate: the request ends with finish_reason "length".
                max_tokens=min(wanted, self.max_model_len - num_prompt_tokens), seed=request.seed,
                stop=list(request.stop), logprobs=request.logprobs,
                structured=structured,
                **{name: value for name, value in fields.items() if value is not None})
        except RequestError:
            raise
        except ValueError as exc:  # a default from a model folder out of range, say
            raise RequestError(f"invalid sampling settings: {exc}") from None

    def _check_size(self, hf_messages: list[dict[str, Any]], sources: list[ImageSource]) -> None:
        """Refuse a request over the per-request limits, before any image is read or any text tokenised."""
        if len(sources) > self.max_images_per_request:
            raise RequestError(f"the request has {len(sources)} images, over the limit of "
                               f"{self.max_images_per_request} (max_images_per_request)", kind="too_many_images")
        chars = sum(len(m["content"]) if isinstance(m["content"], str) else
                    sum(len(p.get("text", "")) for p in m["content"] or []) for m in hf_messages)
        if chars > self.max_request_chars:
            raise RequestError(f"the request has {chars} characters of text, over the limit of "
                               f"{self.max_request_chars} (max_request_chars)", kind="request_too_large")


SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                   "repetition_penalty")
"""The request fields that take a default when unset (seed, stop and logprobs have none but off)."""


def structured_output_of(response_format: Mapping[str, Any] | None) -> StructuredOutput | None:
    """OpenAI's response_format as a StructuredOutput (None for text); RequestError naming response_format when it
    is malformed. Whether the schema compiles is the grammar compiler's to say (vlray/engine/structured_output.py)."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput("json_object")
    if kind != "json_schema":
        raise RequestError(f"response_format.type={kind!r}: use text, json_object or json_schema")
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(schema, Mapping):
        raise RequestError("response_format.json_schema.schema must be a JSON Schema object, got "
                           f"{type(schema).__name__}")
    try:
        return StructuredOutput("json_schema", json.dumps(schema, allow_nan=False))
    except (TypeError, ValueError) as exc:  # not JSON (bytes, NaN, a cycle): only a Python caller can send it
        raise RequestError(f"response_format.json_schema.schema is not JSON: {exc}") from None


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
        # Tool calls go to the template as OpenAI sends them: it renders each as a <tool_call> block.
        extra: dict[str, Any] = {}
        if message.tool_calls:
            extra["tool_calls"] = [call.model_dump() for call in message.tool_calls]
        if message.tool_call_id is not None:
            extra["tool_call_id"] = message.tool_call_id
        if message.content is None or isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content, **extra})
            has_user_input |= message.role in ("user", "tool") and bool((message.content or "").strip())
            continue
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if part.type == "text":
                parts.append({"type": "text", "text": part.text})
                has_user_input |= message.role in ("user", "tool") and bool(part.text.strip())
            else:
                if message.role != "user":
                    raise RequestError(f"images are only accepted in user messages, not {message.role}",
                                       kind="invalid_request")
                parts.append({"type": "image"})
                sources.append(part.image_url.url)
                has_user_input = True
        messages.append({"role": message.role, "content": parts, **extra})
    if not has_user_input:
        raise RequestError("no user message with text or images", kind="empty_prompt")
    return messages, sources
