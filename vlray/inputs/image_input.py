"""Turn an image source (path, file://, data: or http(s) URL, bytes, PIL image) into a checked RGB image and its
hash. An ImagePolicy says which sources are accepted (local files, http fetching) before anything is read.

Every failure is a RequestError whose message names the problem (missing file, not an image, truncated,
too many pixels), so the request fails alone and the rest of its batch goes on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from vlray.inputs.http_fetch import fetch_image_bytes
from vlray.inputs.image_policy import DEFAULT_IMAGE_POLICY, ImagePolicy
from vlray.schema import ImageSource, RequestError

# We enforce our own pixel limit before decoding; PIL's bomb check (a warning, then an error past twice its
# limit) would otherwise fire first with a less useful message.
Image.MAX_IMAGE_PIXELS = None

# Formats that hold a picture and that PIL decodes. Anything else (SVG, PDF, ...) is refused by name.
_SIGNATURES = {b"%PDF": "PDF", b"<svg": "SVG", b"<?xml": "XML/SVG", b"<!DOC": "HTML", b"<html": "HTML"}


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """A decoded RGB image and the SHA-256 of its encoded bytes (the cache key's content part)."""

    image: Image.Image
    content_hash: str

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def read_image_bytes(source: ImageSource, policy: ImagePolicy = DEFAULT_IMAGE_POLICY) -> bytes:
    """The encoded bytes behind a path, file://, data: or http(s) URL, or bytes (load_image handles PIL images)."""
    if isinstance(source, bytes):
        return source
    if not isinstance(source, str):
        raise RequestError(f"unsupported image source of type {type(source).__name__}", kind="invalid_image")
    if source.startswith("data:"):
        return _decode_data_url(source)
    if source.startswith(("http://", "https://")):
        if not policy.allow_http:
            raise RequestError(f"http(s) image URLs are not fetched here: {source[:80]} (send the image as a data: "
                               "URL or bytes)", kind="image_url_not_allowed")
        return fetch_image_bytes(source, policy.max_fetch_bytes, policy.fetch_timeout_s)
    if source.startswith("file://"):
        parsed = urlparse(source)
        path = Path(unquote(parsed.path))
    elif "://" in source[:12]:
        raise RequestError(f"unsupported image URL scheme: {source[:40]}", kind="invalid_image")
    else:
        path = Path(source)
    path = policy.local_path(path, source)
    # Under a root (a server), errors name the path as the client gave it, not where the server keeps it.
    shown = source[:200] if policy.local_root is not None else str(path)
    if not path.exists():
        raise RequestError(f"image file not found: {shown}", kind="image_not_found")
    if not path.is_file():
        raise RequestError(f"image path is not a file: {shown}", kind="image_not_found")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RequestError(f"cannot read image file {shown}: {exc.strerror}", kind="image_not_found") from None


def _decode_data_url(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise RequestError("malformed data: URL (no comma before the payload)", kind="invalid_image")
    if ";base64" not in header:
        raise RequestError("data: URL images must be base64 encoded (data:image/png;base64,...)", kind="invalid_image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("corrupt base64 in data: URL image", kind="corrupt_image") from None


def load_image(source: ImageSource, max_input_pixels: int, policy: ImagePolicy = DEFAULT_IMAGE_POLICY
               ) -> LoadedImage:
    """Decode and check one image; RGB out. Raises RequestError with the reason."""
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_input_pixels)
        rgb = source.convert("RGB")
        digest = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
        return LoadedImage(rgb, digest)
    data = read_image_bytes(source, policy)
    if not data:
        raise RequestError("image is empty (0 bytes)", kind="corrupt_image")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.size, max_input_pixels)  # header only: nothing decoded yet
            image.load()
    except RequestError:
        raise
    except UnidentifiedImageError:
        named = next((name for sig, name in _SIGNATURES.items() if data.lstrip()[:5].startswith(sig)), None)
        what = f"unsupported image type ({named})" if named else "not a readable image (unknown format)"
        raise RequestError(what, kind="unsupported_image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise RequestError(f"corrupt or truncated image: {exc}", kind="corrupt_image") from None
    try:
        rgb = image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise RequestError(f"cannot convert image to RGB: {exc}", kind="corrupt_image") from None
    return LoadedImage(rgb, digest)


def _check_pixels(size: tuple[int, int], max_input_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise RequestError(f"image has no pixels ({width}x{height})", kind="corrupt_image")
    if width * height > max_input_pixels:
        raise RequestError(
            f"image is {width}x{height} ({width * height / 1e6:.1f} MP), over the limit of "
            f"{max_input_pixels / 1e6:.1f} MP (max_input_pixels); downscale it first", kind="image_too_large")
    if max(width, height) / min(width, height) > 200:
        # Qwen's smart resize refuses aspect ratios past 200; say so before it does.
        raise RequestError(f"image aspect ratio {width}x{height} is over 200:1", kind="invalid_image")
