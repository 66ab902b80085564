"""ImagePolicy: data: URLs always; local files anywhere, under a root or not at all; http(s) only when allowed,
and then within a byte and time budget (against a real HTTP server on 127.0.0.1)."""

import base64
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from vlray.inputs.image_input import load_image
from vlray.inputs.image_policy import ImagePolicy
from vlray.schema import RequestError

LIMIT = 36_000_000


def _png(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, 90).save(buffer, format="PNG")
    return buffer.getvalue()


class _ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        png = _png()
        if self.path == "/ok.png":
            self._send(200, png)
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/ok.png")
            self.end_headers()
        elif self.path == "/big.png":
            self._send(200, png + b"\0" * 5000)
        elif self.path == "/undeclared-big":  # no Content-Length: the limit must hold while reading
            self.send_response(200)
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"\0" * 1000)
        elif self.path == "/slow":  # a byte at a time, each within a read timeout, too slow overall
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path == "/text":
            self._send(200, b"<html>not an image</html>")
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # the client hanging up on a too big or too slow answer is the point of those tests


@pytest.fixture(scope="module")
def image_server():
    server = _QuietServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _kind(source, policy) -> str:
    with pytest.raises(RequestError) as info:
        load_image(source, LIMIT, policy)
    return info.value.kind


def test_server_policy_reads_no_local_file_by_default(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png())
    policy = ImagePolicy.for_server()
    assert _kind(str(path), policy) == "image_path_not_allowed"
    assert _kind(f"file://{path}", policy) == "image_path_not_allowed"
    assert _kind("https://example.com/a.png", policy) == "image_url_not_allowed"
    data_url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    assert load_image(data_url, LIMIT, policy).size == (40, 30)


def test_local_root_resolves_relative_paths_inside_it_and_nothing_outside(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(_png())
    (tmp_path / "secret.png").write_bytes(_png())
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    policy = ImagePolicy.for_server(local_root=root)
    assert load_image("sub/a.png", LIMIT, policy).size == (40, 30)
    assert load_image(f"file://{root}/sub/../sub/a.png", LIMIT, policy).size == (40, 30)
    for escape in ("../secret.png", "../../../../etc/passwd", str(tmp_path / "secret.png"), "link.png",
                   f"file://{root}/../secret.png"):
        assert _kind(escape, policy) == "image_path_not_allowed", escape
    with pytest.raises(RequestError) as info:
        load_image("missing.png", LIMIT, policy)
    assert info.value.kind == "image_not_found" and str(tmp_path) not in str(info.value)


def test_policy_validation():
    with pytest.raises(ValueError, match="allow_local_files"):
        ImagePolicy(allow_local_files=False, local_root="/tmp")
    with pytest.raises(ValueError, match="max_fetch_bytes"):
        ImagePolicy(max_fetch_bytes=0)
    with pytest.raises(ValueError, match="fetch_timeout_s"):
        ImagePolicy(fetch_timeout_s=0)


def test_http_fetch_when_allowed(image_server):
    policy = ImagePolicy.for_server(allow_http=True, max_fetch_bytes=4000, fetch_timeout_s=1.0)
    assert load_image(f"{image_server}/ok.png", LIMIT, policy).size == (40, 30)
    assert load_image(f"{image_server}/moved", LIMIT, policy).size == (40, 30)
    assert _kind(f"{image_server}/ok.png", ImagePolicy.for_server()) == "image_url_not_allowed"


@pytest.mark.parametrize("path, kind, fragment", [
    ("/big.png", "image_too_large", "over the fetch limit of 4000 bytes"),
    ("/undeclared-big", "image_too_large", "over the fetch limit"),
    ("/slow", "image_fetch_failed", "longer than 1 s"),
    ("/missing.png", "image_fetch_failed", "HTTP 404"),
    ("/text", "unsupported_image", "HTML"),
])
def test_http_fetch_is_bounded(image_server, path, kind, fragment):
    policy = ImagePolicy.for_server(allow_http=True, max_fetch_bytes=4000, fetch_timeout_s=1.0)
    with pytest.raises(RequestError) as info:
        load_image(f"{image_server}{path}", LIMIT, policy)
    assert info.value.kind == kind and fragment in str(info.value)


def test_unreachable_host_is_a_fetch_error():
    with socket.socket() as sock:  # a port nobody listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = ImagePolicy.for_server(allow_http=True, fetch_timeout_s=1.0)
    assert _kind(f"http://127.0.0.1:{port}/none.png", policy) == "image_fetch_failed"
