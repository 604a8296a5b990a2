"""A minimal HTTP/1.1 server connection on raw gevent sockets.

Hand-written rather than pywsgi because the fake must misbehave in ways a WSGI server
hides: reset the TCP connection (RST, via SO_LINGER 0) before or in the middle of a
response, and stall with the socket open. It still speaks enough HTTP for real
clients: keep-alive, pipelining, Content-Length and chunked request bodies,
``Expect: 100-continue``, and chunked responses for streams.
"""
from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

MAX_HEADER_BYTES = 65_536
MAX_BODY_BYTES = 512 * 1024 * 1024
RECV_BYTES = 65_536
_REASONS = {status.value: status.phrase for status in HTTPStatus}


class ConnectionClosed(Exception):
    """The peer went away or we reset the connection: stop serving this socket."""


class BadRequest(Exception):
    """Unparsable request: answer 400 and close, as there is no safe next request."""


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]          # lower-cased names; repeated headers joined by ", "
    body: bytes
    _json: Any = field(default=None, repr=False)
    _json_parsed: bool = field(default=False, repr=False)

    @property
    def json(self) -> Any:
        """The body as JSON, or None when it is absent or not JSON."""
        if not self._json_parsed:
            self._json_parsed = True
            try:
                self._json = json.loads(self.body) if self.body else None
            except (ValueError, RecursionError):
                self._json = None
        return self._json


class Connection:
    """One client socket: read requests, write responses, or misbehave."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.keep_alive = True

    # -- reading -------------------------------------------------------------------

    def _fill(self) -> None:
        data = self.sock.recv(RECV_BYTES)
        if not data:
            raise ConnectionClosed()
        self.buf += data

    def _read_until(self, marker: bytes, limit: int) -> bytes:
        start = 0
        while True:
            pos = self.buf.find(marker, start)
            if pos != -1:
                found = bytes(self.buf[:pos])
                del self.buf[:pos + len(marker)]
                return found
            if len(self.buf) > limit:
                raise BadRequest("header section too large")
            start = max(0, len(self.buf) - len(marker) + 1)
            self._fill()

    def _read_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def read_request(self) -> Request | None:
        """The next request, or None when the client closed the connection between
        requests (the normal end of a keep-alive connection)."""
        try:
            while not self.buf.strip(b"\r\n"):
                self.buf.clear()
                self._fill()
        except ConnectionClosed:
            return None
        head = self._read_until(b"\r\n\r\n", MAX_HEADER_BYTES).lstrip(b"\r\n").decode("latin-1")
        request_line, _, header_text = head.partition("\r\n")
        try:
            method, target, version = request_line.split(" ")
        except ValueError:
            raise BadRequest("malformed request line") from None
        headers: dict[str, str] = {}
        for line in header_text.split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep:
                continue
            name = name.strip().lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
        connection = headers.get("connection", "").lower()
        self.keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        if headers.get("expect", "").lower() == "100-continue":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self._read_body(headers)
        path, _, query = target.partition("?")
        return Request(method.upper(), unquote(path), query, headers, body)

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                size_line = self._read_until(b"\r\n", 1024).split(b";")[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    raise BadRequest("malformed chunk size") from None
                if size == 0:
                    while self._read_until(b"\r\n", MAX_HEADER_BYTES):
                        pass   # trailers
                    return bytes(body)
                if len(body) + size > MAX_BODY_BYTES:
                    raise BadRequest("body too large")
                body += self._read_exact(size)
                self._read_exact(2)
        length = headers.get("content-length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise BadRequest("malformed content-length") from None
        if not 0 <= size <= MAX_BODY_BYTES:
            raise BadRequest("bad content-length")
        return self._read_exact(size)

    # -- writing -------------------------------------------------------------------

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append("Connection: keep-alive" if self.keep_alive else "Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Status line and headers only; the caller writes a body of the announced size."""
        self.sock.sendall(self._head(status, headers))

    def send(self, status: int, body: bytes, content_type: str = "application/json",
             headers: list[tuple[str, str]] | None = None) -> None:
        head = self._head(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                   *(headers or [])])
        self.sock.sendall(head + body)

    def send_json(self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> None:
        self.send(status, json.dumps(payload).encode(), headers=headers)

    def start_chunked(self, status: int, content_type: str, headers: list[tuple[str, str]] | None = None) -> None:
        self.sock.sendall(self._head(status, [("Content-Type", content_type), ("Transfer-Encoding", "chunked"),
                                              *(headers or [])]))

    def send_chunk(self, data: bytes) -> None:
        if data:
            self.sock.sendall(b"%x\r\n%b\r\n" % (len(data), data))

    def end_chunked(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")

    def reset(self) -> None:
        """Abort with a TCP RST, the way a crashed upstream or a middlebox does."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            self.sock.close()
        raise ConnectionClosed()
