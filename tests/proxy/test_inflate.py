"""Bounded, incremental inflation of compressed upstream bodies (``gateway.proxy.inflate``)."""
from __future__ import annotations

import gzip
import random
import zlib

import pytest

from gateway.proxy.inflate import CHUNK, InflateError, Inflater, supported


def _inflate(encoding: str, data: bytes, step: int) -> list[bytes]:
    inflater = Inflater(encoding)
    pieces = [p for at in range(0, len(data), step) for p in inflater.feed(data[at:at + step])]
    return pieces + list(inflater.finish())


def _text(size: int) -> bytes:
    rnd = random.Random(7)
    return bytes(rnd.choice(b'abcdefghij {}":,0123456789\n') for _ in range(size))


@pytest.mark.parametrize(("encoding", "compress"), [
    ("gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send it
])
def test_round_trip_in_pieces_of_at_most_one_chunk(encoding, compress) -> None:
    body = _text(600_000)
    for step in (1 << 20, 4096, 7):
        pieces = _inflate(encoding, compress(body), step)
        assert b"".join(pieces) == body
        assert max(len(p) for p in pieces) <= CHUNK


def test_concatenated_gzip_members_are_all_decoded() -> None:
    assert b"".join(_inflate("gzip", gzip.compress(b"one ") + gzip.compress(b"two"), 5)) == b"one two"


def test_a_gzip_bomb_stops_at_the_ratio_cap_without_inflating_it_all() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = b"".join(bomb.compress(b"\0" * (1 << 20)) for _ in range(100)) + bomb.flush()  # 100 MiB of zeros
    inflater = Inflater("gzip")
    produced = 0
    with pytest.raises(InflateError, match="100:1"):
        for at in range(0, len(data), CHUNK):
            for piece in inflater.feed(data[at:at + CHUNK]):
                assert len(piece) <= CHUNK
                produced += len(piece)
    assert produced < 8 << 20


def test_corrupt_and_unknown_encodings_are_refused() -> None:
    with pytest.raises(InflateError):
        _inflate("gzip", b"\x1f\x8b\x08\x00garbage-garbage", 100)
    assert supported(None) and supported("identity") and supported("GZIP")
    assert not supported("br") and not supported("gzip, br")
    with pytest.raises(InflateError):
        Inflater("br")
