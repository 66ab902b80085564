"""The Serve app's arguments (`serve run jobs.serve:app model=M key=value ...`, or `args` in a Serve config
file): one pydantic model, since they come from a command line or a file; a typo is an error, not a default.

`ServerConfig` is the server's own settings (replicas, queues, image access) plus every EngineConfig field, with
that field's type, default and docstring: the engine's knobs are derived from vlray/config.py, not copied here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from vlray.config import EngineConfig
from vlray.config_fields import config_fields
from vlray.inputs.image_policy import DEFAULT_FETCH_TIMEOUT_S, DEFAULT_MAX_FETCH_BYTES, ImagePolicy


DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
"""A body over this is a 413: room for a 20 MB image as a base64 data: URL (27 MB), not for a text bomb."""


class ServerSettings(BaseModel):
    """What only the server has: replicas and their resources, queues, and which images requests may use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    served_model_name: str | None = Field(
        default=None, description="The `model` clients send and /v1/models lists; default: `model` as given.")
    num_replicas: int = Field(default=1, ge=1, description="Replicas, each with its own copy of the model.")
    num_gpus_per_replica: float | None = Field(
        default=None, ge=0, description="None: 1 where the cluster has GPUs (and device_profile is not cpu), else 0.")
    num_cpus_per_replica: float | None = Field(
        default=None, gt=0, description="None: 1 with a GPU; without one, the cluster's CPUs shared by the replicas.")
    max_queued_requests: int = Field(
        default=64, ge=1, description="Requests waiting per replica (and at each proxy) beyond the running batch; "
                                      "past it the server answers 429 with Retry-After.")
    batch_wait_ms: float = Field(default=10.0, ge=0, description="How long an idle replica waits for a batch to fill.")
    retry_after_s: float = Field(default=2.0, gt=0, description="The Retry-After of a 429.")
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES, ge=1, description="Largest request body; a larger one is a 413, found "
                                                             "while the body is read.")
    image_root: str | None = Field(
        default=None, description="Folder whose images requests may name by path or file:// URL; None: no local "
                                  "files at all.")
    allow_http_images: bool = Field(
        default=False, description="Fetch http(s) image URLs (the server fetches any URL it is sent: trusted "
                                   "clients only).")
    max_image_fetch_bytes: int = Field(default=DEFAULT_MAX_FETCH_BYTES, ge=1)
    image_fetch_timeout_s: float = Field(default=DEFAULT_FETCH_TIMEOUT_S, gt=0,
                                         description="One deadline per image fetch: connect, headers, body, redirects.")
    allow_private_image_hosts: bool = Field(
        default=False, description="Fetch images from private, loopback and link-local addresses too (refused by "
                                   "default, after DNS and on every redirect): trusted networks only.")

    @model_validator(mode="after")
    def _engine_settings_are_valid(self) -> "ServerSettings":
        self.engine_config()  # EngineConfig's own checks, reported at startup rather than in a replica
        self.image_policy()
        return self

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model  # type: ignore[attr-defined]

    def engine_config(self) -> EngineConfig:
        """The EngineConfig of this server: every one of its fields as given here."""
        return EngineConfig(**{f.name: getattr(self, f.name) for f in config_fields(EngineConfig)})

    def image_policy(self) -> ImagePolicy:
        return ImagePolicy.for_server(self.image_root, self.allow_http_images, self.max_image_fetch_bytes,
                                      self.image_fetch_timeout_s, self.allow_private_image_hosts)


def engine_fields_for_pydantic() -> dict[str, Any]:
    """EngineConfig's fields as pydantic field definitions: (type, Field(default, description))."""
    out = {}
    for f in config_fields(EngineConfig):
        if f.name in ServerSettings.model_fields:
            raise TypeError(f"EngineConfig.{f.name} and a server setting share the name; rename one")
        default = ... if f.default is dataclasses.MISSING else f.default
        out[f.name] = (f.annotation, Field(default=default, description=f.help))
    return out


ServerConfig = create_model(  # type: ignore[call-overload]
    "ServerConfig", __base__=ServerSettings, __module__=__name__,
    __doc__="The server's settings and every EngineConfig field (`serve run jobs.serve:app key=value ...`).",
    **engine_fields_for_pydantic())
