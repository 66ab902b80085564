"""Cache keys: SHA-256 of an image's content plus everything that changes the cached value, and the interface
the caches talk to (a local TieredStore, or the CacheActor through its client)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from transformers import ProcessorMixin

PREPROCESSED_PREFIX = "pre"
ENCODER_PREFIX = "enc"


class BlobCache(Protocol):
    """Bytes by key, many at a time; a miss is an absent key, never an error."""

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]: ...

    def put_many(self, items: Mapping[str, bytes]) -> None: ...


def processor_settings(processor: ProcessorMixin) -> str:
    """A digest of the image processor's settings (size bounds, patch and merge sizes, mean, std, ...)."""
    settings: dict[str, Any] = processor.image_processor.to_dict()
    return _sha256(json.dumps(settings, sort_keys=True, default=str))


def preprocessed_image_key(image_hash: str, settings: str, max_input_pixels: int) -> str:
    """Key of an image's pixel patches and grid: its bytes' hash + processor settings.

    max_input_pixels is in it because a cached image skips the check against it.
    """
    return f"{PREPROCESSED_PREFIX}-{_sha256(image_hash, settings, str(max_input_pixels))}"


def encoder_output_key(image_hash: str, settings: str, model_fingerprint: str, dtype: str) -> str:
    """Key of an image's vision-encoder output: its bytes' hash + processor settings + model + dtype."""
    return f"{ENCODER_PREFIX}-{_sha256(image_hash, settings, model_fingerprint, dtype)}"


def _sha256(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()
