"""JSONL lines in the encoding the file says it has: BOMs, UTF-16 and UTF-32 with or without one."""

import io
import json

import pytest

from vlray.batch.text_lines import iter_text_lines

ROWS = [{"id": "a", "prompt": "héllo"}, {"id": "b", "prompt": "日本"}]
TEXT = "\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32",
                                      "utf-32-le", "utf-32-be"])
def test_every_unicode_encoding_gives_the_same_rows(encoding):
    data = TEXT.replace("\n", "\r\n").encode(encoding)
    lines = list(iter_text_lines(io.BytesIO(data).read))
    assert [json.loads(line) for line in lines if line.strip()] == ROWS


def test_bad_bytes_are_a_bad_line_not_the_end_of_the_file():
    data = b'{"id": "a", "prompt": "x\xff"}\n{"id": "b", "prompt": "y"}\n'
    lines = list(iter_text_lines(io.BytesIO(data).read))
    assert len(lines) == 2 and "\ufffd" in lines[0] and json.loads(lines[1])["id"] == "b"
