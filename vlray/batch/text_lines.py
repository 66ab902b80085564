"""Lines of a JSONL file in the encoding it says it has: a BOM names UTF-8, UTF-16 or UTF-32; without one,
NUL bytes in the first line show UTF-16 or UTF-32 (JSON text is mostly ASCII); else UTF-8. Read in chunks
through an incremental decoder, so a gigabyte file of base64 images is never held whole."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator

READ_CHUNK_BYTES = 8 << 20
_BOMS = [(codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")]


def sniff_encoding(head: bytes) -> tuple[str, int]:
    """(encoding, BOM length) from a file's first bytes."""
    for bom, name in _BOMS:  # UTF-32 LE's BOM begins with UTF-16 LE's: it is tried first
        if head.startswith(bom):
            return name, len(bom)
    sample = head[:256]
    if len(sample) >= 4 and sample.count(0):
        if sample[1:4] == b"\0\0\0":
            return "utf-32-le", 0
        if sample[:3] == b"\0\0\0":
            return "utf-32-be", 0
        if sample[1] == 0:
            return "utf-16-le", 0
        if sample[0] == 0:
            return "utf-16-be", 0
    return "utf-8", 0


def iter_text_lines(read: Callable[[int], bytes]) -> Iterator[str]:
    """Decoded lines (without their line ends) of a byte stream read by `read(n)`; undecodable bytes become
    U+FFFD, so a bad line is a malformed row rather than the end of the file."""
    head = read(READ_CHUNK_BYTES)
    encoding, skip = sniff_encoding(head)
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    pending = ""
    chunk = head[skip:]
    while chunk:
        pending += decoder.decode(chunk)
        *complete, pending = pending.split("\n")
        for line in complete:
            yield line.rstrip("\r")
        chunk = read(READ_CHUNK_BYTES)
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending.rstrip("\r")
