"""Download an image over http(s) within a byte and time budget, so a slow, huge or hostile URL cannot hold a
worker or reach what the server can reach.

- One deadline for the whole fetch (DNS, connect, headers, body, every redirect): a server that trickles its
  headers a byte at a time, or a chain of slow redirects, is cut off when the time is up.
- The body is decoded through a BoundedDecoder, so a small compressed body cannot expand past the cap.
- Every hop's host is resolved first and refused when any of its addresses is private, loopback, link-local
  or otherwise not global (unless allowed); the connection then goes to the address that was checked, so a
  second DNS answer cannot swap it (TLS still checks the certificate against the host name).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import zlib

import httpx
import zstandard

from vlray.inputs.bounded_decode import BoundedDecoder, OverBudget
from vlray.schema import RequestError

MAX_REDIRECTS = 3


def fetch_image_bytes(url: str, max_bytes: int, timeout_s: float, allow_private_hosts: bool = False) -> bytes:
    """GET the URL: at most max_bytes (decoded), all within timeout_s. RequestError on any failure."""
    shown = url[:120]

    async def bounded() -> bytes:
        return await asyncio.wait_for(_fetch(url, shown, max_bytes, allow_private_hosts), timeout_s)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        raise RequestError(f"fetching image {shown} took longer than {timeout_s:g} s", kind="image_fetch_failed"
                           ) from None
    except OverBudget:
        raise _too_large(shown, max_bytes) from None
    except httpx.HTTPError as exc:
        raise RequestError(f"fetching image {shown} failed: {exc}", kind="image_fetch_failed") from None


def is_public_address(address: str) -> bool:
    """Whether an IP address is one the open internet routes (not private, loopback, link-local, reserved ...)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def _fetch(url: str, shown: str, max_bytes: int, allow_private_hosts: bool) -> bytes:
    async with httpx.AsyncClient(follow_redirects=False, timeout=None, trust_env=False) as client:
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            if target.scheme not in ("http", "https") or not target.host:
                raise RequestError(f"image URL {shown} redirects to an unsupported URL {str(target)[:80]}",
                                   kind="image_fetch_failed")
            address = await _checked_address(target, shown, allow_private_hosts)
            headers = {"Host": target.netloc.decode("ascii"), "Accept": "image/*", "Accept-Encoding": "identity"}
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            request = client.build_request("GET", target.copy_with(host=address), headers=headers,
                                           extensions=extensions)
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    target = target.join(response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise RequestError(f"fetching image {shown} failed: HTTP {response.status_code}",
                                       kind="image_fetch_failed")
                return await _read_body(response, shown, max_bytes)
            finally:
                await response.aclose()
    raise RequestError(f"fetching image {shown} failed: more than {MAX_REDIRECTS} redirects",
                       kind="image_fetch_failed")


async def _checked_address(target: httpx.URL, shown: str, allow_private_hosts: bool) -> str:
    """The address to connect to for this hop's host, after checking every address it resolves to."""
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(target.host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RequestError(f"fetching image {shown} failed: cannot resolve {target.host[:80]} ({exc})",
                           kind="image_fetch_failed") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not allow_private_hosts:
        refused = [a for a in addresses if not is_public_address(a)]
        if refused:
            raise RequestError(
                f"image host {target.host[:80]} resolves to a private, loopback or link-local address "
                f"({refused[0]}); such hosts are not fetched (the server's allow_private_image_hosts setting "
                "allows them on trusted networks)", kind="image_url_not_allowed")
    return addresses[0]


async def _read_body(response: httpx.Response, shown: str, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise OverBudget
    try:
        decoder = BoundedDecoder(response.headers.get("content-encoding", ""), max_bytes)
    except ValueError as exc:
        raise RequestError(f"fetching image {shown} failed: {exc}", kind="image_fetch_failed") from None
    chunks, raw_size = [], 0
    try:
        async for raw in response.aiter_raw():
            raw_size += len(raw)
            if raw_size > max_bytes:
                raise OverBudget
            chunks.append(decoder.feed(raw))
    except (zlib.error, zstandard.ZstdError) as exc:
        raise RequestError(f"fetching image {shown} failed: undecodable body ({exc})", kind="image_fetch_failed"
                           ) from None
    return b"".join(chunks)


def _too_large(shown: str, max_bytes: int) -> RequestError:
    return RequestError(f"image at {shown} is over the fetch limit of {max_bytes} bytes", kind="image_too_large")
