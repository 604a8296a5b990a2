"""Request bodies are read against a clock: an idle timeout, a total deadline, and a cap
on concurrent body reads per client address (issue 15, finding 4).

Without them a client sending its body at one byte per ten seconds held a greenlet (and,
behind nginx's ``proxy_request_buffering off``, an nginx connection) forever, and twenty
such clients made a worker unreachable. The rule lives at the one place every body passes
through - ``environ["wsgi.input"]`` - so the LLM routes, the pass-through's streamed
chunked upload (``requests`` reads it while sending it on) and the portal's form parsing
are all bound by it without knowing.

- idle: no byte for ``BODY_IDLE_TIMEOUT_SECONDS`` - the client socket's own timeout,
  set around each read and restored after it, so it is a true "nothing arrived" clock
  per ``recv`` and never touches how the response is written;
- total: the whole body within ``BODY_TIMEOUT_SECONDS`` of its first read - a
  ``gevent.Timeout`` around each read, because a trickle never trips the idle clock;
- both answer 408 (``BodyTimeout``, an ``ApiError``: the app's handler renders it in the
  route's error shape), and the connection is closed after the answer: where the next
  request would start is unknown;
- a body read while ``BODY_READS_PER_ADDRESS`` others from the same client address (the
  trusted one: this runs inside ProxyFix; IPv6 counted by its /64) are being read answers
  429 and closes the connection. A slot is held from the first read to the end of the
  body (a short read) or of the view, so a fast upload costs a slot for milliseconds;
- a body the server cannot parse (a malformed chunk size, a missing chunk terminator, a
  client that vanished mid-body) answers 400 instead of an unhandled exception's 500.

Without gevent (the Flask test client, a sync server) reads cannot be interrupted; the
deadline is then checked between reads only.
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import TYPE_CHECKING, Any

from .addresses import limit_identity
from .errors import ApiError

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("gateway.body_deadline")

LINGER_SECONDS = 1.0      # after a refusal: how long unread client bytes are drained
LINGER_BYTES = 65_536     # ... and how many, so closing does not reset the answer away


class BodyTimeout(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(408, message, code="request_timeout")


class _TotalDeadline(Exception):  # noqa: N818 - an Exception, so gunicorn marks the body failed
    """Raised into the reading greenlet by gevent when the total deadline passes."""


def _gevent_active() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("socket"))


class Slots:
    """Body reads in progress per client identity, in one worker (WorkerState)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def take(self, identity: str, limit: int) -> bool:
        count = self.counts.get(identity, 0)
        if count >= limit:
            return False
        self.counts[identity] = count + 1
        return True

    def give_back(self, identity: str) -> None:
        count = self.counts.get(identity, 0) - 1
        if count > 0:
            self.counts[identity] = count
        else:
            self.counts.pop(identity, None)


class DeadlineInput:
    """``wsgi.input`` with the clocks and the slot (see the module docstring). Offers
    what gunicorn's own body offers: ``read``, ``readline``, ``readlines``, iteration."""

    def __init__(self, raw: Any, sock: socket.socket | None, idle: float, total: float,
                 slots: Slots, identity: str, per_address: int, use_gevent: bool) -> None:
        self.raw = raw
        self.sock = sock
        self.idle = idle
        self.total = total
        self.slots = slots
        self.identity = identity
        self.per_address = per_address
        self.use_gevent = use_gevent
        self.deadline: float | None = None
        self.holding = False
        self.done = False
        self.refused = False   # answered 408/429/400 here: the connection must close

    def _start(self) -> None:
        if self.deadline is not None:
            return
        if not self.slots.take(self.identity, self.per_address):
            self.refused = True
            self.done = True
            raise ApiError(429, "Too many request bodies are being sent from your address at once; retry shortly",
                           code="too_many_uploads", headers={"Retry-After": "1"})
        self.holding = True
        self.deadline = time.monotonic() + self.total

    def release(self) -> None:
        if self.holding:
            self.holding = False
            self.slots.give_back(self.identity)

    def _timer(self, remaining: float) -> AbstractContextManager[Any]:
        if not self.use_gevent:
            return nullcontext()
        import gevent

        return gevent.Timeout(remaining, _TotalDeadline)

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        if self.refused:
            raise BodyTimeout("The request body was not received in time")
        if self.done:
            return method(*args)   # the body is over: nothing left to wait for
        self._start()
        assert self.deadline is not None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._fail()
        prior = None
        if self.sock is not None:
            prior = self.sock.gettimeout()
            self.sock.settimeout(min(self.idle, remaining))
        try:
            with self._timer(remaining):
                result = method(*args)
        except (_TotalDeadline, TimeoutError):
            self._fail()
        except ApiError:
            raise
        except Exception as error:  # noqa: BLE001 - the server's body reader: malformed framing, a vanished client
            self.refused = True
            self.release()
            log.info("unreadable request body: %s", type(error).__name__)
            raise ApiError(400, "The request body could not be read (malformed or incomplete)",
                           code="invalid_body") from None
        finally:
            if self.sock is not None:
                with suppress(OSError):
                    self.sock.settimeout(prior)
        if not self.use_gevent and time.monotonic() > self.deadline:
            self._fail()
        return result

    def _fail(self) -> Any:
        self.refused = True
        self.release()
        raise BodyTimeout("The request body was not received in time")

    def _ended(self) -> None:
        self.done = True
        self.release()

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._call(self.raw.read, size)
        if size is None or size < 0 or len(data) < size:
            self._ended()   # the server's reader returns short only at the body's end
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data: bytes = self._call(self.raw.readline, size)
        if not data:
            self._ended()
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = self._call(self.raw.readlines, hint)
        self._ended()
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


def _has_body(environ: dict[str, Any]) -> bool:
    length = environ.get("CONTENT_LENGTH") or ""
    if length not in ("", "0"):
        return True
    return "chunked" in (environ.get("HTTP_TRANSFER_ENCODING") or "").lower()


def _linger_and_close(sock: socket.socket) -> None:
    """After a refusal the answer is out; the client may still be sending. Half-close
    (the client sees the answer end), read what is in flight for a moment so closing
    with unread bytes does not reset the connection before the answer is read, then
    shut the read side: the server finds no next request there and closes."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        drained = 0
        while drained < LINGER_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            data = sock.recv(16_384)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass
    finally:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


class BodyDeadline:
    """The WSGI middleware: wraps ``wsgi.input`` of every request with a body. Installed
    inside ProxyFix so ``REMOTE_ADDR`` is already the trusted client address."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], app: Flask) -> None:
        self.wsgi_app = wsgi_app
        self.idle = float(app.config["BODY_IDLE_TIMEOUT_SECONDS"])
        self.total = float(app.config["BODY_TIMEOUT_SECONDS"])
        self.per_address = int(app.config["BODY_READS_PER_ADDRESS"])
        self.flask_app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not _has_body(environ):
            return self.wsgi_app(environ, start_response)
        from .worker_state import state_of

        sock = environ.get("gunicorn.socket")
        if not isinstance(sock, socket.socket):
            sock = None
        wrapped = DeadlineInput(environ["wsgi.input"], sock, self.idle, self.total, state_of(self.flask_app).body_reads,
                                limit_identity(environ.get("REMOTE_ADDR") or "unknown"), self.per_address,
                                _gevent_active())
        environ["wsgi.input"] = wrapped
        try:
            result = self.wsgi_app(environ, start_response)
        finally:
            wrapped.release()   # the view is done with the body, whatever it read
        return _Closing(result, wrapped, sock)


class _Closing:
    """The response iterable, unchanged, with the refusal's close added to ``close()``
    (called by the server after the last byte is written)."""

    def __init__(self, result: Iterable[bytes], wrapped: DeadlineInput, sock: socket.socket | None) -> None:
        self.result = result
        self.wrapped = wrapped
        self.sock = sock

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.result)

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            if self.wrapped.refused and self.sock is not None:
                _linger_and_close(self.sock)
