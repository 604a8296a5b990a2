"""Scrub the upstream secret that was sent out of everything relayed back, by value.

An upstream (or whatever answers at a backend's address) can echo the credential
KeyGate sent it - in a body (the fake's ``/echo``, a debugging endpoint, an error
page), in a header (``ETag``, ``Content-Disposition``, ``Set-Cookie``) - to any key
holder (issue 15, finding 7). Every relayed byte stream and header passes through
here, success or error, streamed or not. I/O-free; tested on recorded bytes split at
every position.

The rule (one copy, also used for error messages by ``upstream_errors``), for the
secret ``S`` that was sent on this request:

- every run of the relayed bytes that is a part of ``S`` is replaced, whole, by
  ``[redacted]`` when it is at least ``MIN_RUN`` (8) bytes long and starts like ``S``
  (a prefix), ends like ``S`` (a suffix), or is ``S`` itself; and when it is at least
  ``2 * MIN_RUN - 1`` (15) bytes long wherever in ``S`` it comes from;
- the run is extended over as much of ``S`` as the bytes keep matching, so a
  12-character prefix echo is replaced entirely (not its first 8 characters only,
  which left characters 9-12 readable before);
- shorter fragments (under 8 bytes; a middle piece under 15) pass: they are too
  common by chance to remove from arbitrary bytes, and reveal too little of a
  credential to matter.

How: ``S`` is cut into 8-byte needles at offsets 0, 8, 16, ... and ``len(S) - 8``;
any run qualifying above contains one of them whole, so a few ``bytes.find`` scans
per chunk find every candidate, which is then extended byte by byte (rare: only
where a needle occurs).

Streaming (``StreamScrubber``): a chunk's tail that is a part of ``S`` (at most
``len(S)`` bytes, usually none: a secret has no whitespace, and event streams end
every event with a newline) is held back until the next chunk shows whether it
becomes a run, so a secret split across chunks is caught without delaying ordinary
output.
"""
from __future__ import annotations

REDACTED = b"[redacted]"
MIN_RUN = 8


class SecretPattern:
    """The precomputed search for one secret (``secret`` at least ``MIN_RUN`` bytes;
    shorter ones are searched whole only)."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        size = len(secret)
        if size <= MIN_RUN:
            offsets = [0]
            self.width = size
        else:
            offsets = sorted({*range(0, size - MIN_RUN + 1, MIN_RUN), size - MIN_RUN})
            self.width = MIN_RUN
        self.offsets: dict[bytes, list[int]] = {}
        for offset in offsets:
            self.offsets.setdefault(secret[offset:offset + self.width], []).append(offset)

    def runs(self, data: bytes) -> list[tuple[int, int]]:
        """The (start, end) intervals of ``data`` to redact, overlapping ones merged, in order."""
        found = []
        for needle, offsets in self.offsets.items():
            at = data.find(needle)
            while at >= 0:
                run = self._extend(data, at, offsets)
                if run is not None:
                    found.append(run)
                    at = data.find(needle, max(at + 1, run[1] - self.width + 1))  # bounded on repetitive input
                else:
                    at = data.find(needle, at + 1)
        return _merged(found)

    def _extend(self, data: bytes, at: int, offsets: list[int]) -> tuple[int, int] | None:
        """The longest qualifying run around the needle found at ``at`` (None if none)."""
        secret, size = self.secret, len(self.secret)
        best: tuple[int, int] | None = None
        for offset in offsets:
            start, s_start = at, offset
            while start > 0 and s_start > 0 and data[start - 1] == secret[s_start - 1]:
                start -= 1
                s_start -= 1
            end, s_end = at + self.width, offset + self.width
            while end < len(data) and s_end < size and data[end] == secret[s_end]:
                end += 1
                s_end += 1
            if self._qualifies(s_start, s_end) and (best is None or end - start > best[1] - best[0]):
                best = (start, end)
        return best

    def _qualifies(self, s_start: int, s_end: int) -> bool:
        """Whether the part ``S[s_start:s_end]`` is redacted (the rule above)."""
        length = s_end - s_start
        if s_start == 0 and s_end == len(self.secret):
            return True
        if length >= 2 * MIN_RUN - 1:
            return True
        return length >= MIN_RUN and (s_start == 0 or s_end == len(self.secret))

    def pending(self, data: bytes) -> int:
        """The length of the longest tail of ``data`` that is a part of the secret
        (what a later chunk could still complete into a run)."""
        low, high = 0, min(len(self.secret), len(data))
        while low < high:  # a tail of a part is a part: binary search on the length
            mid = (low + high + 1) // 2
            if data[-mid:] in self.secret:
                low = mid
            else:
                high = mid - 1
        return low


def _merged(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if out and start < out[-1][1]:  # overlapping; adjacent runs stay two
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _redact(data: bytes, runs: list[tuple[int, int]]) -> bytes:
    if not runs:
        return data
    parts, last = [], 0
    for start, end in runs:
        parts += [data[last:start], REDACTED]
        last = end
    parts.append(data[last:])
    return b"".join(parts)


def scrub_bytes(data: bytes, secret: str) -> bytes:
    """``data`` with ``secret`` redacted by the rule above (whole data at once)."""
    if not secret or not data:
        return data
    pattern = SecretPattern(secret.encode())
    return _redact(data, pattern.runs(data))


def scrub_text(text: str, secret: str) -> str:
    """``scrub_bytes`` for a string (a header value, an error message); lossless for
    any string it does not change."""
    if not secret or not text:
        return text
    raw = text.encode("utf-8", "surrogatepass")
    cleaned = scrub_bytes(raw, secret)
    return text if cleaned is raw else cleaned.decode("utf-8", "surrogatepass")


class StreamScrubber:
    """``scrub_bytes`` over a stream of chunks: ``feed`` answers what can be relayed
    now, ``finish`` the held-back rest at the end. With no secret it passes chunks
    through untouched."""

    def __init__(self, secret: str) -> None:
        self.pattern = SecretPattern(secret.encode()) if secret else None
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        if self.pattern is None:
            return chunk
        data = self.held + chunk if self.held else chunk
        runs = self.pattern.runs(data)
        keep_from = len(data) - self.pattern.pending(data)
        for start, end in runs:
            if start < keep_from < end:
                keep_from = start  # a run crossing into the held tail is held whole
        self.held = data[keep_from:]
        return _redact(data[:keep_from], [run for run in runs if run[1] <= keep_from])

    def finish(self) -> bytes:
        if self.pattern is None or not self.held:
            return b""
        data, self.held = self.held, b""
        return _redact(data, self.pattern.runs(data))
