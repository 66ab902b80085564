"""Content-Encoding decoders that never hold more than a byte budget: a 1 KB zstd or gzip body can expand to
gigabytes, so output is produced a bounded piece at a time and the fetch stops as soon as it passes the cap."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import zstandard


class OverBudget(Exception):
    """The decoded body passed its byte budget."""


class BoundedDecoder:
    """Decodes a body chunk by chunk through its Content-Encoding(s); OverBudget past `max_bytes` of output."""

    def __init__(self, content_encoding: str, max_bytes: int) -> None:
        names = [n.strip().lower() for n in content_encoding.split(",") if n.strip()]
        names = [n for n in names if n != "identity"]
        unknown = [n for n in names if n not in _STEPS]
        if unknown:
            raise ValueError(f"unsupported Content-Encoding {', '.join(unknown)!s} (gzip, deflate and zstd are read)")
        self.max_bytes = max_bytes
        self.size = 0
        # Encodings are listed in the order they were applied: undo the last first.
        self._steps = [_STEPS[n](max_bytes) for n in reversed(names)]

    def feed(self, data: bytes) -> bytes:
        """The decoded bytes of one raw chunk."""
        for step in self._steps:
            data = step(data)
        self.size += len(data)
        if self.size > self.max_bytes:
            raise OverBudget
        return data


def _zlib_step(wbits: int) -> Callable[[int], Callable[[bytes], bytes]]:
    def make(max_bytes: int) -> Callable[[bytes], bytes]:
        decoder = zlib.decompressobj(wbits)

        def step(data: bytes) -> bytes:
            # max_length bounds what one call may produce; a tail left over means the budget is passed.
            out = decoder.decompress(data, max_bytes + 1)
            if decoder.unconsumed_tail or len(out) > max_bytes:
                raise OverBudget
            return out
        return step
    return make


def _zstd_step(max_bytes: int) -> Callable[[bytes], bytes]:
    out = _CappedSink(max_bytes)
    # stream_writer hands its output to the sink in pieces of write_size: the sink stops it past the cap.
    writer = zstandard.ZstdDecompressor().stream_writer(out, write_size=min(max_bytes + 1, 1 << 17),
                                                        write_return_read=True)

    def step(data: bytes) -> bytes:
        writer.write(data)
        return out.take()
    return step


class _CappedSink:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.total = 0
        self.pending: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.total += len(data)
        if self.total > self.max_bytes:
            raise OverBudget
        self.pending.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.pending = b"".join(self.pending), []
        return data


_STEPS: dict[str, Callable[[int], Callable[[bytes], bytes]]] = {
    "gzip": _zlib_step(16 + zlib.MAX_WBITS), "x-gzip": _zlib_step(16 + zlib.MAX_WBITS),
    "deflate": _zlib_step(zlib.MAX_WBITS), "zstd": _zstd_step,
}
