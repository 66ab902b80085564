"""Image sources decode to RGB with a content hash; each kind of bad image gets its own clear error."""

import base64
import io

import pytest
from PIL import Image

from vlray.inputs.image_input import load_image
from vlray.inputs.image_policy import ImagePolicy
from vlray.schema import RequestError

LIMIT = 36_000_000


def _png_bytes(size=(40, 30), mode="RGB", fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format=fmt)
    return buffer.getvalue()


def test_every_source_kind_gives_the_same_image(tmp_path):
    data = _png_bytes()
    path = tmp_path / "a.png"
    path.write_bytes(data)
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    loaded = [load_image(src, LIMIT) for src in (str(path), f"file://{path}", data_url, data)]
    assert {im.content_hash for im in loaded} == {loaded[0].content_hash}
    assert all(im.image.mode == "RGB" and im.size == (40, 30) for im in loaded)
    from_pil = load_image(Image.open(path), LIMIT)
    assert from_pil.size == (40, 30)


def test_modes_are_converted_to_rgb():
    for mode in ("L", "RGBA", "P", "CMYK"):
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        assert load_image(_png_bytes(mode=mode, fmt=fmt), LIMIT).image.mode == "RGB"


def _error(source, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        load_image(source, kwargs.pop("limit", LIMIT), **kwargs)
    return info.value


def test_missing_file(tmp_path):
    err = _error(str(tmp_path / "missing.png"))
    assert err.kind == "image_not_found" and "missing.png" in str(err)
    assert _error(str(tmp_path)).kind == "image_not_found"  # a folder is not an image


def test_truncated_and_corrupt_images():
    png = _png_bytes((200, 200))
    assert _error(png[: len(png) // 2]).kind == "corrupt_image"
    jpeg = _png_bytes((200, 200), fmt="JPEG")
    assert _error(jpeg[:300]).kind == "corrupt_image"
    assert _error(b"").kind == "corrupt_image"
    assert _error(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10).kind in ("corrupt_image", "unsupported_image")


def test_unsupported_types_are_named():
    assert "SVG" in str(_error(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>"))
    assert "PDF" in str(_error(b"%PDF-1.7\n..."))
    assert _error(b"just some text").kind == "unsupported_image"


def test_too_many_pixels_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buffer, format="PNG")
    err = _error(buffer.getvalue())
    assert err.kind == "image_too_large"
    assert "8000x6000" in str(err) and "48.0 MP" in str(err)


def test_bad_data_urls_and_schemes():
    assert _error("data:image/png;base64,!!!not base64!!!").kind == "corrupt_image"
    assert _error("data:image/png,rawdata").kind == "invalid_image"
    assert _error("https://example.com/cat.png").kind == "image_url_not_allowed"
    assert _error("ftp://example.com/cat.png").kind == "invalid_image"


def test_local_root_blocks_path_traversal(tmp_path):
    inside = tmp_path / "root" / "ok.png"
    inside.parent.mkdir()
    inside.write_bytes(_png_bytes())
    policy = ImagePolicy(local_root=inside.parent)
    assert load_image(str(inside), LIMIT, policy).size == (40, 30)
    err = _error(str(inside.parent / ".." / ".." / "etc" / "passwd"), policy=policy)
    assert err.kind == "image_path_not_allowed"
