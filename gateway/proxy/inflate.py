"""Incremental, bounded decoding of a compressed upstream body. I/O-free.

KeyGate asks every upstream for ``Accept-Encoding: identity``, but an upstream may
compress anyway. The relay needs the plain bytes (the secret scrubber and the usage
parser read them), so a ``gzip``/``deflate`` body is inflated here - never whole:
``zlib.decompressobj`` with ``max_length`` per step, so one compressed chunk yields
at most ``CHUNK`` bytes at a time however far it inflates, and memory stays bounded
(a 305 kB gzip bomb once cost a worker 601 MB; issue 15, finding 3). The decoded body
is what the client receives (without ``Content-Encoding``) and what the byte quota
counts.

A ratio cap ends a bomb cleanly instead of relaying gigabytes of zeros: once more
than ``FREE_BYTES`` are out, the output may be at most ``MAX_RATIO`` times the input
(real JSON, text and event streams compress far less); past it ``InflateError``, which
the relay turns into a clean end (an in-band error event on an event stream).
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator

CHUNK = 64 * 1024
MAX_RATIO = 100
FREE_BYTES = 1 << 20
SUPPORTED = ("gzip", "x-gzip", "deflate")


class InflateError(Exception):
    """The body cannot be decoded, or decodes past the ratio cap."""


def encoding_of(header: str | None) -> str | None:
    """The single content coding named by ``header`` (lower case), None for identity."""
    value = (header or "").strip().lower()
    return None if value in ("", "identity") else value


def supported(header: str | None) -> bool:
    encoding = encoding_of(header)
    return encoding is None or encoding in SUPPORTED


class Inflater:
    """Decodes one body fed in pieces; ``feed`` and ``finish`` yield pieces of at most
    ``CHUNK`` bytes."""

    def __init__(self, encoding: str, max_ratio: int = MAX_RATIO, free_bytes: int = FREE_BYTES) -> None:
        if encoding not in SUPPORTED:
            raise InflateError(f"unsupported content encoding {encoding[:32]!r}")
        self.encoding = encoding
        self.max_ratio, self.free_bytes = max_ratio, free_bytes
        self.bytes_in = self.bytes_out = 0
        self._started = False
        self._d = self._decoder()

    def _decoder(self, raw: bool = False) -> zlib._Decompress:
        if raw:
            return zlib.decompressobj(-zlib.MAX_WBITS)  # "deflate" sent without its zlib header
        return zlib.decompressobj(zlib.MAX_WBITS | (16 if self.encoding != "deflate" else 0))

    def _out(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self.bytes_out += len(data)
        if self.bytes_out > self.free_bytes and self.bytes_out > self.max_ratio * self.bytes_in:
            raise InflateError(f"the body inflates more than {self.max_ratio}:1")
        yield data

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.bytes_in += len(data)
        if not data:
            return
        if not self._started:
            self._started = True
            if self.encoding == "deflate" and (data[0] & 0x0F) != 8:
                self._d = self._decoder(raw=True)
        while True:
            try:
                piece = self._d.decompress(data, CHUNK)
            except zlib.error as exc:
                raise InflateError(f"corrupt {self.encoding} body") from exc
            yield from self._out(piece)
            if self._d.eof:
                rest = self._d.unused_data
                if not rest or self.encoding == "deflate":
                    return  # anything after the end of a deflate stream is ignored
                self._d = self._decoder()  # a further gzip member
                data = rest
                continue
            data = self._d.unconsumed_tail
            if not data and len(piece) < CHUNK:
                return  # input used up and no output pending

    def finish(self) -> Iterator[bytes]:
        try:
            piece = self._d.flush(CHUNK)
        except zlib.error as exc:
            raise InflateError(f"corrupt {self.encoding} body") from exc
        yield from self._out(piece)
