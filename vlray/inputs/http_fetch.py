"""Download an image over http(s) within a byte and time budget, so a slow or huge URL cannot hold a worker."""

from __future__ import annotations

import time

import httpx

from vlray.schema import RequestError

MAX_REDIRECTS = 3


def fetch_image_bytes(url: str, max_bytes: int, timeout_s: float) -> bytes:
    """GET the URL: at most max_bytes, and no read once timeout_s has passed. RequestError on any failure."""
    shown = url[:120]
    deadline = time.monotonic() + timeout_s
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True, max_redirects=MAX_REDIRECTS) as client:
            with client.stream("GET", url, headers={"Accept": "image/*"}) as response:
                if response.status_code != 200:
                    raise RequestError(f"fetching image {shown} failed: HTTP {response.status_code}",
                                       kind="image_fetch_failed")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise _too_large(shown, max_bytes)
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_large(shown, max_bytes)
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("deadline passed")
                    chunks.append(chunk)
                return b"".join(chunks)
    except httpx.TimeoutException:
        raise RequestError(f"fetching image {shown} took longer than {timeout_s:g} s", kind="image_fetch_failed"
                           ) from None
    except httpx.HTTPError as exc:
        raise RequestError(f"fetching image {shown} failed: {exc}", kind="image_fetch_failed") from None


def _too_large(shown: str, max_bytes: int) -> RequestError:
    return RequestError(f"image at {shown} is over the fetch limit of {max_bytes} bytes", kind="image_too_large")
