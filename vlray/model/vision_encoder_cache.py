"""Vision-encoder outputs by image content: look every image up, encode only the misses in one packed call.

The key is SHA-256(image bytes + processor settings + model fingerprint + dtype), so a value is reused only
where it would be computed again bit for bit. Values are safetensors bytes (embeddings and DeepStack features in
the model's dtype), checked against the image's grid when read: anything that does not fit is a miss.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from vlray.cache.keys import BlobCache, encoder_output_key
from vlray.model.vision_encoder import ImageFeatures, VisionEncoder, patches_per_image

log = logging.getLogger(__name__)


def serialize_features(features: ImageFeatures) -> bytes:
    """safetensors bytes of one image's features (copied to the CPU)."""
    tensors = {"embeds": features.embeds.detach().to("cpu", copy=True).contiguous()}
    for i, layer in enumerate(features.deepstack):
        tensors[f"deepstack.{i}"] = layer.detach().to("cpu", copy=True).contiguous()
    return save_tensors(tensors)


def deserialize_features(data: bytes, num_tokens: int, num_deepstack: int, dtype: torch.dtype) -> ImageFeatures:
    """Features from safetensors bytes; ValueError unless shapes and dtype fit the image and the model."""
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError) as exc:
        raise ValueError(f"not safetensors: {exc}") from None
    names = ["embeds"] + [f"deepstack.{i}" for i in range(num_deepstack)]
    if sorted(tensors) != sorted(names):
        raise ValueError(f"tensors {sorted(tensors)}, expected {names}")
    embeds = tensors["embeds"]
    for name in names:
        t = tensors[name]
        if t.dtype != dtype or t.ndim != 2 or t.shape != embeds.shape or t.shape[0] != num_tokens:
            raise ValueError(f"{name} is {tuple(t.shape)} {t.dtype}, expected ({num_tokens}, hidden) {dtype}")
    return ImageFeatures(embeds, tuple(tensors[f"deepstack.{i}"] for i in range(num_deepstack)))


class CachedVisionEncoder:
    """`encode(pixel_values, grid_thw, image_hashes)` -> per-image features, as VisionEncoder.encode, via a cache."""

    def __init__(self, encoder: VisionEncoder, cache: BlobCache, processor_settings: str,
                 model_fingerprint: str) -> None:
        self.encoder = encoder
        self.cache = cache
        self.processor_settings = processor_settings
        self.model_fingerprint = model_fingerprint
        self.dtype_name = str(encoder.output_side.dtype).removeprefix("torch.")
        self.num_hits = 0

    def key(self, image_hash: str) -> str:
        return encoder_output_key(image_hash, self.processor_settings, self.model_fingerprint, self.dtype_name)

    def encode(self, pixel_values: torch.Tensor | np.ndarray, grid_thw: torch.Tensor | np.ndarray,
               image_hashes: Sequence[str] | None = None) -> list[ImageFeatures]:
        """Features of each image on the model's device, in order.

        pixel_values [sum of patches, patch_dim] and grid_thw [num_images, 3], as the processor made them;
        image_hashes: SHA-256 of each image's bytes (PreparedRequest.image_hashes). Without them (or with the
        wrong count) each image is keyed by its pixel patches instead, which is as exact but costs a hash.
        `num_hits` counts the images served without encoding (a repeat within the call included).
        """
        pixel_values = torch.as_tensor(pixel_values)
        grid_thw = torch.as_tensor(grid_thw)
        offsets = np.cumsum([0, *patches_per_image(grid_thw)])
        slices = [pixel_values[offsets[i]:offsets[i + 1]] for i in range(len(grid_thw))]
        if image_hashes is None or len(image_hashes) != len(slices):
            image_hashes = [_patch_hash(s, g) for s, g in zip(slices, grid_thw)]
        keys = [self.key(h) for h in image_hashes]
        tokens = self.encoder.tokens_per_image(grid_thw)

        side = self.encoder.output_side
        features: dict[str, ImageFeatures] = {}
        unique = list(dict.fromkeys(keys))
        for key, data in self.cache.get_many(unique).items():
            try:
                cached = deserialize_features(data, tokens[keys.index(key)], self.encoder.num_deepstack, side.dtype)
                features[key] = cached.to(side.device)
            except ValueError as exc:
                log.warning("cached vision-encoder output %s does not fit its image (%s); encoding again", key, exc)

        missing = [keys.index(key) for key in unique if key not in features]
        if missing:
            encoded = self.encoder.encode(torch.cat([slices[i] for i in missing]), grid_thw[missing])
            features.update({keys[i]: f for i, f in zip(missing, encoded)})
            self.cache.put_many({keys[i]: serialize_features(f) for i, f in zip(missing, encoded)})
        self.num_hits += len(keys) - len(missing)
        return [features[key] for key in keys]


def _patch_hash(patches: torch.Tensor, grid: torch.Tensor) -> str:
    digest = hashlib.sha256(patches.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(np.asarray(grid, dtype=np.int64).tobytes())
    return "patches-" + digest.hexdigest()
