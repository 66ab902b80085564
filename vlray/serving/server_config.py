"""The Serve app's arguments (`serve run jobs.serve:app model=M key=value ...`, or `args` in a Serve config
file): one pydantic model, since they come from a command line or a file; a typo is an error, not a default."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlray.config import DEFAULT_MAX_PIXELS, EngineConfig
from vlray.inputs.image_policy import DEFAULT_FETCH_TIMEOUT_S, DEFAULT_MAX_FETCH_BYTES, ImagePolicy


class ServerConfig(BaseModel):
    """What to serve, on what, and how much to take in at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="Local Hugging Face folder, or hub id in the local HF cache.")
    served_model_name: str | None = Field(
        default=None, description="The `model` clients send and /v1/models lists; default: `model` as given.")
    num_replicas: int = Field(default=1, ge=1, description="Replicas, each with its own copy of the model.")
    backend: Literal["engine", "hf"] = Field(
        default="engine", description="engine: continuous batching (requests join at every step); hf: static "
                                      "batches through transformers generate (the reference).")
    kv_cache_bytes: int | None = Field(
        default=None, ge=1, description="engine: KV cache memory; None: most of the GPU memory left after loading "
                                        "(2 GiB on CPU).")
    device_profile: Literal["auto", "cpu", "sm61", "modern"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    quantization: Literal["none", "int8", "int4"] = Field(
        default="none", description="Text decoder and LM head: int8 (CPU; CUDA sm75+) or int4 (CPU; NF4 on CUDA, "
                                    "Pascal included).")
    vision_quantization: Literal["none", "int8"] = Field(default="none", description="Vision tower: int8 (CPU).")
    num_gpus_per_replica: float | None = Field(
        default=None, ge=0, description="None: 1 where the cluster has GPUs (and device_profile is not cpu), else 0.")
    num_cpus_per_replica: float | None = Field(
        default=None, gt=0, description="None: 1 with a GPU; without one, the cluster's CPUs shared by the replicas.")
    max_batch_size: int = Field(default=16, ge=1, description="Requests generated together at most.")
    max_batch_tokens: int = Field(
        default=8192, ge=1, description="Token budget: of an engine step (prompt tokens + one per decoding request), "
                                        "or of an hf batch (rows x padded length).")
    max_queued_requests: int = Field(
        default=64, ge=1, description="Requests waiting per replica (and at each proxy) beyond the running batch; "
                                      "past it the server answers 429 with Retry-After.")
    batch_wait_ms: float = Field(default=10.0, ge=0, description="How long an idle replica waits for a batch to fill.")
    retry_after_s: float = Field(default=2.0, gt=0, description="The Retry-After of a 429.")
    default_max_tokens: int = Field(default=256, ge=1, description="max_tokens of a request that gives none.")
    max_model_len: int | None = Field(default=None, ge=2, description="Context length; None: the model's.")
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1, description="Cap on an image's pixels after resizing.")
    image_root: str | None = Field(
        default=None, description="Folder whose images requests may name by path or file:// URL; None: no local "
                                  "files at all.")
    allow_http_images: bool = Field(
        default=False, description="Fetch http(s) image URLs (the server fetches any URL it is sent: trusted "
                                   "clients only).")
    max_image_fetch_bytes: int = Field(default=DEFAULT_MAX_FETCH_BYTES, ge=1)
    image_fetch_timeout_s: float = Field(default=DEFAULT_FETCH_TIMEOUT_S, gt=0)

    @model_validator(mode="after")
    def _engine_settings_are_valid(self) -> "ServerConfig":
        self.engine_config()  # EngineConfig's own checks, reported at startup rather than in a replica
        self.image_policy()
        return self

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.model, device_profile=self.device_profile, dtype=self.dtype, max_pixels=self.max_pixels,
            max_model_len=self.max_model_len, default_max_tokens=self.default_max_tokens,
            max_batch_tokens=self.max_batch_tokens, max_batch_size=self.max_batch_size, backend=self.backend,
            kv_cache_bytes=self.kv_cache_bytes, quantization=self.quantization,
            vision_quantization=self.vision_quantization)

    def image_policy(self) -> ImagePolicy:
        return ImagePolicy.for_server(self.image_root, self.allow_http_images, self.max_image_fetch_bytes,
                                      self.image_fetch_timeout_s)
