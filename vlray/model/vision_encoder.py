"""The vision encoder as a component of its own: packed images in, per-image embeddings and DeepStack features out.

`VisionEncoder.encode` runs the model's own `get_image_features` (the Qwen3-VL vision tower, merger and DeepStack
mergers) once over several images packed along the patch axis, and splits the result per image. Any generation
path can use it: the HF generate path hands the features to `generate` as `mm_encoder_outputs`
(`to_mm_encoder_outputs`), and an engine that runs prefill itself scatters `ImageFeatures.embeds` into the image
placeholder positions and adds `deepstack[i]` after decoder layer i, as Qwen3-VL's text model does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from vlray.model.device_profile import DeviceProfile, attention_kernels
from vlray.model.placement import DeviceMoves, ModelPlacement, Side


@dataclass(slots=True)
class ImageFeatures:
    """One image's vision-encoder output, in the model's dtype."""

    embeds: torch.Tensor  # [num_tokens, text_hidden]: one row per image placeholder token
    deepstack: tuple[torch.Tensor, ...]  # one [num_tokens, text_hidden] per DeepStack layer

    @property
    def num_tokens(self) -> int:
        return int(self.embeds.shape[0])

    def to(self, device: torch.device | str) -> "ImageFeatures":
        return ImageFeatures(self.embeds.to(device), tuple(f.to(device) for f in self.deepstack))


def patches_per_image(grid_thw: torch.Tensor) -> list[int]:
    """Rows of pixel_values each image owns: t * h * w of its grid row."""
    return grid_thw.prod(-1).tolist()


class VisionEncoder:
    """Runs a Qwen3-VL model's vision encoder on packed images; counts calls and images encoded."""

    def __init__(self, model: PreTrainedModel, profile: DeviceProfile, placement: ModelPlacement | None = None,
                 moves: DeviceMoves | None = None) -> None:
        """`placement`: where a split model's vision tower runs (its outputs go to the embeddings' side)."""
        self.model = model
        self.profile = profile
        self.placement = placement or ModelPlacement.single(profile.device, profile.dtype)
        self.moves = moves or DeviceMoves()
        visual = model.model.visual
        self.merge_size: int = visual.spatial_merge_size
        self.num_deepstack: int = len(visual.deepstack_visual_indexes)
        self.num_calls = 0
        self.num_images = 0

    @property
    def output_side(self) -> Side:
        """Where (and in what dtype) the features are handed over: beside the embedding lookup."""
        return self.placement.embeddings

    def tokens_per_image(self, grid_thw: torch.Tensor) -> list[int]:
        """Placeholder tokens (and feature rows) of each image: t * h * w / merge^2."""
        return [n // self.merge_size**2 for n in patches_per_image(grid_thw)]

    def encode(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[ImageFeatures]:
        """Features of each image, in order. pixel_values [sum of patches, patch_dim], grid_thw [num_images, 3]."""
        vision, embeddings = self.placement.vision, self.placement.embeddings
        with torch.inference_mode(), attention_kernels(self.profile):
            output = self.model.get_image_features(
                pixel_values.to(vision.device, vision.dtype), grid_thw.to(vision.device), return_dict=True)
        self.num_calls += 1
        self.num_images += int(grid_thw.shape[0])
        # pooler_output: a tuple of [tokens_i, hidden] per image; deepstack_features: per layer, the same split.
        embeds, deepstack = output.pooler_output, output.deepstack_features
        if vision is not embeddings:  # scattered into the embeddings' output: one copy of the step's images
            embeds, deepstack = self.moves.to((embeds, deepstack), embeddings,
                                              f"{vision.name}->{embeddings.name} at the vision outputs",
                                              embeddings.dtype)
        return [ImageFeatures(image, tuple(layer[i] for layer in deepstack)) for i, image in enumerate(embeds)]


def to_mm_encoder_outputs(features: Sequence[ImageFeatures]) -> dict[str, BaseModelOutputWithDeepstackFeatures]:
    """The `mm_encoder_outputs` transformers' generate and forward take instead of pixel_values."""
    num_layers = len(features[0].deepstack) if features else 0
    output = BaseModelOutputWithDeepstackFeatures(
        pooler_output=tuple(f.embeds for f in features),
        deepstack_features=[tuple(f.deepstack[layer] for f in features) for layer in range(num_layers)],
    )
    return {"image": output}
