"""Which image sources a request may name: local files (anywhere, under one folder, or not at all) and
http(s) URLs (off unless turned on, and then bounded in bytes and seconds). data: URLs are always accepted.

The Python API and batch jobs read the caller's own files, so the default policy allows local files anywhere;
a server takes requests from others, so `ImagePolicy.for_server` reads no local file unless given a folder,
and fetches nothing unless told to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlray.schema import RequestError

DEFAULT_MAX_FETCH_BYTES = 20 * 1024 * 1024
DEFAULT_FETCH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    """Where images may come from; checked before anything is read or fetched."""

    allow_local_files: bool = True
    local_root: Path | None = None
    """When set, local paths and file:// URLs must resolve inside this folder (relative paths start in it)."""
    allow_http: bool = False
    """Fetch http(s) image URLs. Only for trusted clients: the server fetches whatever URL it is given (SSRF)."""
    max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.local_root is not None and not isinstance(self.local_root, Path):
            object.__setattr__(self, "local_root", Path(self.local_root))
        if self.local_root is not None and not self.allow_local_files:
            raise ValueError("ImagePolicy: local_root is set but allow_local_files is False; drop one of them.")
        if not isinstance(self.max_fetch_bytes, int) or self.max_fetch_bytes <= 0:
            raise ValueError(f"max_fetch_bytes={self.max_fetch_bytes!r} must be a positive whole number of bytes.")
        if not self.fetch_timeout_s > 0:
            raise ValueError(f"fetch_timeout_s={self.fetch_timeout_s!r} must be a positive number of seconds.")

    @classmethod
    def for_server(cls, local_root: str | Path | None = None, allow_http: bool = False,
                   max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES,
                   fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S) -> "ImagePolicy":
        """A server's policy: local files only under local_root (none without it), http(s) only if allowed."""
        return cls(allow_local_files=bool(local_root), local_root=Path(local_root) if local_root else None,
                   allow_http=allow_http, max_fetch_bytes=max_fetch_bytes, fetch_timeout_s=fetch_timeout_s)

    def local_path(self, path: Path, source: str) -> Path:
        """The file a local source names, or a RequestError when this policy does not let requests read it."""
        if not self.allow_local_files:
            raise RequestError("local image paths are not accepted here: send the image as a data: URL",
                               kind="image_path_not_allowed")
        if self.local_root is None:
            return path.expanduser()
        root = self.local_root.resolve()
        # resolve() follows symlinks and "..", so neither can lead out of the root.
        resolved = (root / path).resolve()
        if not resolved.is_relative_to(root):
            raise RequestError(f"image path {source[:200]} is outside the allowed folder",
                               kind="image_path_not_allowed")
        return resolved


DEFAULT_IMAGE_POLICY = ImagePolicy()
