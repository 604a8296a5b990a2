"""Relay the upstream's bytes to the client as they arrive, reading usage on the side,
and account in ``finally`` - on success, upstream failure and client disconnect alike.

The body is read in pieces of at most ``CHUNK`` bytes whatever its framing (chunked,
``Content-Length`` or close-delimited; ``body_chunks``): never whole, so a 300 MB
download costs a worker one chunk of memory, not 300 MB (issue 15, finding 3). A
compressed body is inflated incrementally with a ratio cap (``inflate``). Every byte
relayed passes the secret scrubber for the upstream secret sent on this request
(``scrub``), streamed or not, success or error status.

The generator receives plain values and the worker's state (no ``request``, no ``g``,
no ``current_app``): it outlives the request context. After the first byte has gone to the client nothing is retried (it
would duplicate output); an upstream failure mid-stream ends the stream with an
explicit error event in the client's API format instead.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests
import urllib3
from sqlalchemy.engine import Engine

from ..errors import gemini_body
from ..observability.events import stream_closed, stream_opened
from ..worker_state import WorkerState
from . import inflate, pool, quota
from .accounting import RequestOutcome, record_usage
from .scrub import StreamScrubber
from .usage_parser import Usage, UsageParser

log = logging.getLogger("gateway.relay")

CHUNK = 64 * 1024


@dataclass
class RelayPlan:
    """Everything the generator needs, decided before the first byte."""

    state: WorkerState
    engine: Engine
    outcome: RequestOutcome
    held: quota.Held | None
    family: str  # openai | anthropic | responses | gemini | gemini_json | http
    started: float
    drain_seconds: float
    estimate_in: int
    budget: quota.ByteBudget | None = None  # the user's byte quota, counted per chunk
    renewal: quota.Renewal | None = None  # keeps the reservation from the sweep while relaying
    secret: str = ""  # the upstream secret sent on this request: scrubbed from every relayed byte


class CountingParser:
    """The parser stand-in for the generic pass-through: bytes only, no usage."""

    saw_done = False

    def __init__(self) -> None:
        self.usage = Usage()

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def finish(self) -> bytes:
        return b""


def error_event(family: str, message: str, code: str = "stream_interrupted") -> bytes:
    """An in-band SSE error, so a client mid-stream learns the stream did not finish.
    ``gemini_json`` (a Gemini stream without ``alt=sse``: one JSON array) gets nothing:
    the array is left unclosed, which every JSON parser reports as an error."""
    if family == "gemini":
        status = 502 if code == "stream_interrupted" else 429
        return b"data: " + json.dumps(gemini_body(status, message, code)).encode() + b"\r\n\r\n"
    if family == "gemini_json":
        return b""
    if family == "anthropic":
        kind = "api_error" if code == "stream_interrupted" else "rate_limit_error"
        payload = {"type": "error", "error": {"type": kind, "message": message}}
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    if family == "responses":
        # The Responses API's own stream error event (the SDKs yield it as ResponseErrorEvent).
        event = {"type": "error", "code": code, "message": message, "param": None}
        return b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"
    kind = "upstream_error" if code == "stream_interrupted" else "insufficient_quota"
    payload = {"error": {"message": message, "type": kind, "code": code, "param": None}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _set_read_deadline(upstream: requests.Response, seconds: float) -> None:
    """Shorten the socket timeout while draining after a client disconnect."""
    try:
        sock = upstream.raw.connection.sock  # type: ignore[union-attr]
        if sock is not None:
            sock.settimeout(max(0.05, seconds))
    except AttributeError:
        pass


def _drain(upstream: requests.Response, chunks: Iterator[bytes], parser: UsageParser | CountingParser,
           plan: RelayPlan) -> None:
    """The client left; keep reading briefly so the final usage is still captured."""
    deadline = time.monotonic() + plan.drain_seconds
    _set_read_deadline(upstream, plan.drain_seconds)
    try:
        for chunk in chunks:
            parser.feed(chunk)
            if parser.saw_done or time.monotonic() > deadline:
                break
            _set_read_deadline(upstream, deadline - time.monotonic())
        else:
            parser.finish()
    except (requests.RequestException, OSError, urllib3.exceptions.HTTPError, inflate.InflateError) as exc:
        log.warning("drain after client disconnect ended early: %s", type(exc).__name__)


def body_chunks(upstream: requests.Response) -> Iterator[bytes]:
    """The upstream body in pieces of at most ``CHUNK`` bytes, decoded.

    ``read1`` answers what has arrived (up to ``CHUNK``), so an event stream is relayed
    event by event whether it is chunked or close-delimited, and a ``Content-Length``
    body is never read whole (``iter_content(None)`` did: urllib3 read such a body in
    one call). The raw bytes are decoded here, not by urllib3, so the ratio cap
    applies (``inflate``)."""
    encoding = inflate.encoding_of(upstream.headers.get("Content-Encoding"))
    inflater = inflate.Inflater(encoding) if encoding else None
    raw = upstream.raw
    while True:
        data = raw.read1(CHUNK, decode_content=False)
        if not data:
            break
        if inflater is None:
            yield data
        else:
            yield from inflater.feed(data)
    if inflater is not None:
        yield from inflater.finish()


def _stalled(exc: BaseException) -> bool:
    """A read timeout mid-stream. ``iter_content`` re-raises urllib3's ReadTimeoutError
    as a ``requests.ConnectionError``, not as ``ReadTimeout``, so look at the cause."""
    if isinstance(exc, (requests.exceptions.ReadTimeout, TimeoutError, urllib3.exceptions.ReadTimeoutError)):
        return True
    return any(isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in exc.args)


class EventFramer:
    """Relays an event stream in whole events, for requests under a byte quota: when the
    quota cuts the stream, the bytes of an event already half-sent cannot be taken back,
    and an in-band error appended to them would be read as part of that event (one
    broken event, no error). Holding back the incomplete last event (a client cannot use
    it before its blank line anyway) lets the cut drop it and the error event stand
    alone. An event longer than ``LIMIT`` is passed on as it comes (memory stays bounded)."""

    LIMIT = 1 << 20
    # A blank line: a line ending followed by another (``\r``, ``\n``, ``\r\n``).
    BLANKS = (b"\r\n\r\n", b"\n\n", b"\r\r", b"\r\n\n", b"\n\r")

    def __init__(self) -> None:
        self.held = b""

    def feed(self, data: bytes) -> bytes:
        buffer = self.held + data
        end = max((buffer.rfind(blank) + len(blank) for blank in self.BLANKS if blank in buffer), default=0)
        if end == 0 and len(buffer) > self.LIMIT:
            end = len(buffer)
        self.held = buffer[end:]
        return buffer[:end]

    def finish(self) -> bytes:
        rest, self.held = self.held, b""
        return rest


def relay(upstream: requests.Response, parser: UsageParser | CountingParser, plan: RelayPlan) -> Iterator[bytes]:
    out = plan.outcome
    first = True
    finished = False
    framer = EventFramer() if plan.budget is not None and out.streamed and upstream.headers.get(
        "Content-Type", "text/event-stream").startswith("text/event-stream") else None
    # One iterator for the whole life of the response: a second one after a disconnect
    # would find the connection closed by the first one's cleanup.
    chunks = body_chunks(upstream)
    scrubber = StreamScrubber(plan.secret)
    stream_opened()
    try:
        try:
            for chunk in chunks:
                if plan.renewal is not None:
                    plan.renewal.tick()
                if plan.budget is not None and not plan.budget.take(len(chunk)):
                    if framer is None:
                        yield from _rest(scrubber)
                    else:  # whole events only: the incomplete last one is dropped
                        complete = framer.feed(scrubber.finish())
                        if complete:
                            yield complete
                    yield from _over_byte_quota(upstream, plan)
                    return
                out.bytes_out += len(chunk)
                data = parser.feed(chunk)
                if data:
                    data = scrubber.feed(data)
                if data and framer is not None:
                    data = framer.feed(data)
                if data:
                    if first:
                        out.ttfb_ms = (time.monotonic() - plan.started) * 1000
                        first = False
                    yield data
            tail = scrubber.feed(parser.finish()) + scrubber.finish()
            if framer is not None:
                tail = framer.feed(tail) + framer.finish()
            if tail:
                yield tail
            finished = True
            out.outcome = "ok" if out.status < 400 else "upstream_error"
            out.upstream_ok = out.status < 500
        except GeneratorExit:
            out.outcome = "client_disconnected"
            out.upstream_ok = True
            _drain(upstream, chunks, parser, plan)
            return
        except inflate.InflateError as exc:
            # The upstream's compressed body is corrupt or a bomb: the backend's doing, not
            # the key's (no failure is reported against it).
            log.warning("upstream body of request %s not relayed further: %s", out.request_id, exc)
            out.outcome, out.error_type = "upstream_error", "content_encoding_refused"
            yield from _rest(scrubber, framer)
            if out.streamed and upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
                yield error_event(plan.family, "The upstream's compressed answer was refused; the stream was ended")
        except (requests.RequestException, OSError, urllib3.exceptions.HTTPError) as exc:
            yield from _rest(scrubber, framer)
            if _stalled(exc):
                out.outcome, out.error_type = "upstream_timeout", "stream_stalled"
                pool.report_failure(plan.state, plan.engine, out.upstream_key_id or 0, None,
                                    "stream stalled (read timeout)")
                if out.streamed:
                    yield error_event(plan.family, "The upstream provider stopped sending; the stream was ended")
                return
            out.outcome, out.error_type = "upstream_error", type(exc).__name__[:64]
            pool.report_failure(plan.state, plan.engine, out.upstream_key_id or 0, None,
                                f"stream broken: {type(exc).__name__}")
            if out.streamed:
                yield error_event(plan.family, "The upstream connection failed mid-stream; the stream was ended")
    finally:
        stream_closed()
        upstream.close()
        _account(parser, plan, finished)


def _rest(scrubber: StreamScrubber, framer: EventFramer | None = None) -> Iterator[bytes]:
    """What the scrubber (and the framer) still hold, when the stream ends early (never
    an empty chunk)."""
    rest = scrubber.finish()
    if framer is not None:
        rest = framer.feed(rest) + framer.finish()
    if rest:
        yield rest


def _over_byte_quota(upstream: requests.Response, plan: RelayPlan) -> Iterator[bytes]:
    """Stop at the byte quota: nothing past it is relayed; an event stream ends with an
    in-band error saying why (another body simply ends there)."""
    out = plan.outcome
    out.outcome, out.error_type = "quota_exceeded", "byte_quota_exceeded"
    out.upstream_ok = True
    if out.streamed and upstream.headers.get("Content-Type", "text/event-stream").startswith("text/event-stream"):
        yield error_event(plan.family, "The byte quota is exhausted; the response was cut", code="quota_exceeded")


def _account(parser: UsageParser | CountingParser, plan: RelayPlan, finished: bool) -> None:
    out = plan.outcome
    usage = parser.usage
    out.latency_ms = (time.monotonic() - plan.started) * 1000
    if usage.reported:
        out.tokens_in, out.tokens_out = usage.input_tokens, usage.output_tokens
        out.cache_read_tokens, out.cache_creation_tokens = usage.cache_read_tokens, usage.cache_creation_tokens
    elif plan.family != "http" and out.status < 400:
        # Nothing reported (or the stream was cut first): estimate, and say so.
        out.estimated = True
        out.tokens_in = plan.estimate_in
        # Rough and on the high side (framing counts too): ~16 relayed bytes per token.
        out.tokens_out = max(0, out.bytes_out // 16)
    try:
        record_usage(plan.state, plan.engine, out, plan.held)
    except Exception:  # accounting must never turn into a client-visible error
        log.exception("recording request %s failed", out.request_id)
