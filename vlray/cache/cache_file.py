"""One cache entry as a file: a fixed header (magic, codec, key, lengths, CRC-32), then the payload.

Writes go to a temporary file in the same folder and are renamed into place, so a reader sees either no file or
a whole one. A file whose header, length or checksum does not match is reported as corrupt (`CorruptCacheFile`),
never returned: a crash mid-write, a truncated copy or a flipped bit become a cache miss, not a wrong answer.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import zlib
from pathlib import Path

import zstandard

MAGIC = b"VLRC"
VERSION = 1
RAW, ZSTD = 0, 1
# magic, version, codec, key length, stored payload length, raw payload length, CRC-32 of the stored payload
_HEADER = struct.Struct("<4sBBHQQI")
# Level 1: the entries are float tensors that compress by ~10% at any level, so speed decides.
ZSTD_LEVEL = 1
KEY_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,200}")


class CorruptCacheFile(ValueError):
    """The file is not a whole, intact cache entry for the key asked for."""


def check_key(key: str) -> str:
    """Keys become file names: letters, digits, `_`, `.` and `-` only, so no key can name a path elsewhere."""
    if not KEY_PATTERN.fullmatch(key) or key.startswith("."):
        raise ValueError(f"cache key {key!r} must be 1-200 letters, digits, '_', '.' or '-', not starting with '.'")
    return key


def encode_entry(key: str, data: bytes, compress: bool) -> bytes:
    """Header + payload (zstd-compressed when `compress`)."""
    stored = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data) if compress else data
    key_bytes = check_key(key).encode()
    header = _HEADER.pack(MAGIC, VERSION, ZSTD if compress else RAW, len(key_bytes), len(stored), len(data),
                          zlib.crc32(stored))
    return header + key_bytes + stored


def decode_entry(key: str, blob: bytes) -> bytes:
    """The raw payload of an encoded entry; CorruptCacheFile when anything does not add up."""
    if len(blob) < _HEADER.size:
        raise CorruptCacheFile(f"{len(blob)} bytes is shorter than the header")
    magic, version, codec, key_len, stored_len, raw_len, crc = _HEADER.unpack_from(blob)
    if magic != MAGIC or version != VERSION or codec not in (RAW, ZSTD):
        raise CorruptCacheFile("bad magic, version or codec")
    start = _HEADER.size + key_len
    if blob[_HEADER.size:start] != key.encode():
        raise CorruptCacheFile("the file holds another key")
    stored = blob[start:]
    if len(stored) != stored_len:
        raise CorruptCacheFile(f"payload is {len(stored)} bytes, the header says {stored_len} (truncated?)")
    if zlib.crc32(stored) != crc:
        raise CorruptCacheFile("checksum mismatch")
    if codec == RAW:
        return stored
    try:
        data = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise CorruptCacheFile(f"zstd: {exc}") from None
    if len(data) != raw_len:
        raise CorruptCacheFile(f"decompressed to {len(data)} bytes, the header says {raw_len}")
    return data


def write_atomic(path: Path, blob: bytes) -> None:
    """Write a file through a temporary file in the same folder and a rename: readers never see half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_entry(path: Path, key: str) -> bytes:
    """The payload of the entry file at `path`; FileNotFoundError if gone, CorruptCacheFile if damaged."""
    return decode_entry(key, path.read_bytes())
