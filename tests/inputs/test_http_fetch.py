"""http_fetch against a real HTTP server on 127.0.0.1 (a thread of this test): one deadline over headers, body
and redirects; decompression capped while streaming; private and loopback hosts refused after DNS and on every
redirect unless allowed (the loopback test server is exactly such a host)."""

import gzip
import io
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import zstandard
from PIL import Image

from vlray.inputs import http_fetch
from vlray.inputs.http_fetch import fetch_image_bytes, is_public_address
from vlray.schema import RequestError

MB = 1 << 20


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), 90).save(buffer, format="PNG")
    return buffer.getvalue()


def _zstd_bomb(size: int) -> bytes:
    compressor = zstandard.ZstdCompressor().compressobj()
    zeros = b"\0" * MB
    return b"".join(compressor.compress(zeros) for _ in range(size // MB)) + compressor.flush()


BOMBS = {"zstd": _zstd_bomb(200 * MB), "gzip": gzip.compress(b"\0" * (20 * MB), compresslevel=9)}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/ok.png":
            self._send(200, _png())
        elif self.path == "/trickle-headers":  # each byte well within any read timeout, the whole far past it
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(40):
                self.wfile.write(b"a")
                self.wfile.flush()
                time.sleep(0.1)
            self.wfile.write(b"\r\nContent-Length: 0\r\n\r\n")
        elif self.path.startswith("/hop/"):  # a chain of redirects, each a little slow
            left = int(self.path.rsplit("/", 1)[1])
            time.sleep(0.4)
            self._redirect("/ok.png" if left == 0 else f"/hop/{left - 1}")
        elif self.path.startswith("/bomb/"):
            encoding = self.path.rsplit("/", 1)[1]
            self._send(200, BOMBS[encoding], {"Content-Encoding": encoding})
        elif self.path == "/brotli":
            self._send(200, b"\x0b\x00\x80", {"Content-Encoding": "br"})
        elif self.path.startswith("/to/"):
            self._redirect(self.path.removeprefix("/to/"))
        else:
            self._send(404, b"no")

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # the client hanging up on a too big or too slow answer is the point


@pytest.fixture(scope="module")
def server():
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _error(url: str, **kwargs) -> RequestError:
    args = dict(max_bytes=MB, timeout_s=1.0, allow_private_hosts=True) | kwargs
    with pytest.raises(RequestError) as info:
        fetch_image_bytes(url, **args)
    return info.value


def test_a_good_image_and_a_redirect_come_through(server):
    assert fetch_image_bytes(f"{server}/ok.png", MB, 2.0, allow_private_hosts=True) == _png()
    assert fetch_image_bytes(f"{server}/hop/0", MB, 2.0, allow_private_hosts=True) == _png()


@pytest.mark.parametrize("path", ["/trickle-headers", "/hop/2"])
def test_one_deadline_covers_headers_and_every_redirect(server, path):
    start = time.monotonic()
    error = _error(f"{server}{path}")
    assert error.kind == "image_fetch_failed" and "longer than 1 s" in str(error)
    assert time.monotonic() - start < 1.8


@pytest.mark.parametrize("encoding", list(BOMBS))
def test_decompression_is_capped_while_streaming(server, encoding):
    tracemalloc.start()
    try:
        error = _error(f"{server}/bomb/{encoding}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.kind == "image_too_large" and "fetch limit" in str(error)
    assert peak < 12 * MB, f"{peak / MB:.0f} MB held while decoding a {len(BOMBS[encoding])} byte body"


def test_an_unknown_content_encoding_is_refused(server):
    error = _error(f"{server}/brotli")
    assert error.kind == "image_fetch_failed" and "unsupported Content-Encoding br" in str(error)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_is_refused_after_dns_unless_allowed(server, host):
    url = server.replace("127.0.0.1", host) + "/ok.png"
    error = _error(url, allow_private_hosts=False)
    assert error.kind == "image_url_not_allowed" and "allow_private_image_hosts" in str(error)
    assert fetch_image_bytes(url, MB, 2.0, allow_private_hosts=True) == _png()


def test_every_redirect_is_checked_again(server, monkeypatch):
    # The test server stands for a public host; its redirect to another loopback address must still be refused.
    monkeypatch.setattr(http_fetch, "is_public_address", lambda address: address == "127.0.0.1")
    port = server.rsplit(":", 1)[1]
    assert fetch_image_bytes(f"{server}/ok.png", MB, 2.0) == _png()
    error = _error(f"{server}/to/http://127.0.0.2:{port}/ok.png", allow_private_hosts=False)
    assert error.kind == "image_url_not_allowed" and "127.0.0.2" in str(error)


@pytest.mark.parametrize("address, public", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False), ("172.16.5.4", False),
    ("169.254.169.254", False), ("::1", False), ("fe80::1", False), ("::ffff:127.0.0.1", False), ("0.0.0.0", False),
    ("100.64.0.1", False), ("224.0.0.1", False), ("8.8.8.8", True), ("2606:4700::1111", True)])
def test_address_classes(address, public):
    assert is_public_address(address) is public
