"""Vision-encoder outputs for a step's images: through the encoder-output cache when there is one, counted in
the stats. Both generation paths encode images ahead of the language model through this one class."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlray.cache.keys import BlobCache, processor_settings
from vlray.model.loader import LoadedModel
from vlray.model.vision_encoder import ImageFeatures, VisionEncoder
from vlray.model.vision_encoder_cache import CachedVisionEncoder
from vlray.stats import PipelineStats


class ImageEncoder:
    """`encode(pixel_values, grid_thw, hashes)` -> one ImageFeatures per image."""

    def __init__(self, loaded: LoadedModel, stats: PipelineStats, cache: BlobCache | None = None) -> None:
        """`cache`: where encoder outputs are kept (None: every image is encoded)."""
        self.vision_encoder = VisionEncoder(loaded.model, loaded.profile, loaded.placement, loaded.moves)
        self.cached = (CachedVisionEncoder(self.vision_encoder, cache, processor_settings(loaded.processor),
                                           loaded.fingerprint) if cache is not None else None)
        self.stats = stats

    def encode(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor,
               image_hashes: Sequence[str]) -> list[ImageFeatures]:
        """Outputs of packed images (patches image after image), from the cache where it has them."""
        calls, images = self.vision_encoder.num_calls, self.vision_encoder.num_images
        with self.stats.stage("encode"):
            if self.cached is not None:
                features = self.cached.encode(pixel_values, grid_thw, image_hashes)
            else:
                features = self.vision_encoder.encode(pixel_values, grid_thw)
        self.stats.num_images += int(grid_thw.shape[0])
        self.stats.num_encoder_calls += self.vision_encoder.num_calls - calls
        self.stats.num_images_encoded += self.vision_encoder.num_images - images
        return features
