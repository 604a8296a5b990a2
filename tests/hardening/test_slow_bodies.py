"""Slow and broken request bodies against a real gunicorn+gevent gateway (issue 15,
finding 4 and the malformed-chunked item of 11), with raw sockets: a body that trickles
or stalls answers 408 in the route's error shape within the deadline and the connection
closes; twenty slow bodies from one address do not make a 20-connection worker
unreachable (past BODY_READS_PER_ADDRESS they are refused with 429); a malformed chunked
body answers 400, never a 500 with a traceback."""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fixtures.gateway_server import GatewayServer, start_gateway

from .conftest import World

IDLE, TOTAL = 2, 4


@pytest.fixture
def slow_gateway(gateway_env: dict[str, str], tmp_path: Path) -> Iterator[GatewayServer]:
    env = dict(gateway_env, BODY_IDLE_TIMEOUT_SECONDS=str(IDLE), BODY_TIMEOUT_SECONDS=str(TOTAL),
               BODY_READS_PER_ADDRESS="8", GATEWAY_WORKER_CONNECTIONS="20")
    server = start_gateway(env, tmp_path / "gateway.log", workers=1)
    try:
        yield server
    finally:
        server.stop()


def _open(server: GatewayServer, method_path: str, headers: dict[str, str]) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TOTAL + 10)
    lines = [f"{method_path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    sock.sendall("\r\n".join(lines).encode())
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers and body of the answer, and whether the server then closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, data
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        piece = sock.recv(65536)
        assert piece
        body += piece
    try:
        closed = sock.recv(1) == b""
    except OSError:
        closed = True
    return int(status_line.split()[1]), headers, body[:length], closed


def _http_backend(world: World) -> str:
    name = f"up-{uuid.uuid4().hex[:8]}"
    world.admin.post("/backends", {"name": name, "kind": "http", "base_url": world.upstream.url})
    return f"/proxy/{name}/up"


def _trickle(sock: socket.socket, every: float, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            sock.sendall(b" ")
        except OSError:
            return
        stop.wait(every)


@pytest.mark.parametrize("path,shape", [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic"),
                                        ("/admin/login", "generic"), ("/proxy/nowhere/up", "generic")])
def test_a_trickling_body_answers_408_in_the_routes_shape_and_the_connection_closes(
        world: World, slow_gateway: GatewayServer, path: str, shape: str) -> None:
    headers = {"Authorization": f"Bearer {world.key}", "Content-Type": "application/json"}
    if path.startswith("/proxy"):
        path = _http_backend(world)
        headers["Transfer-Encoding"] = "chunked"   # a streamed upload, read by requests while it sends
    else:
        headers["Content-Length"] = "100000"
    if path == "/admin/login":
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "100000"}
    sock = _open(slow_gateway, f"POST {path}", headers)
    stop = threading.Event()
    # Under the idle timeout every time, so only the total deadline can end it.
    chunk = b"1\r\n \r\n" if "Transfer-Encoding" in headers else b" "
    trickler = threading.Thread(target=lambda: _trickle_raw(sock, chunk, IDLE / 4, stop), daemon=True)
    trickler.start()
    try:
        status, response_headers, body, closed = _answer(sock)   # the socket's timeout bounds the wait
    finally:
        stop.set()
        trickler.join()
        sock.close()
    assert status == 408, body
    error = json.loads(body)
    if shape == "openai":
        assert error["error"]["type"] == "invalid_request_error" or error["error"]["code"] == "request_timeout"
        assert set(error["error"]) == {"message", "type", "code", "param"}
    elif shape == "anthropic":
        assert error["type"] == "error" and set(error["error"]) == {"type", "message"}
    else:
        assert error["error"]["code"] == "request_timeout"
    assert closed


def _trickle_raw(sock: socket.socket, chunk: bytes, every: float, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            sock.sendall(chunk)
        except OSError:
            return
        stop.wait(every)


def test_a_stalled_body_answers_408_after_the_idle_timeout(world: World, slow_gateway: GatewayServer) -> None:
    sock = _open(slow_gateway, "POST /v1/chat/completions",
                 {"Authorization": f"Bearer {world.key}", "Content-Type": "application/json", "Content-Length": "50"})
    sock.sendall(b'{"model": "gpt-4o-mini",')   # then nothing
    try:
        status, _, body, closed = _answer(sock)
    finally:
        sock.close()
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
    assert closed


def test_twenty_slow_bodies_from_one_address_leave_the_worker_reachable(world: World,
                                                                        slow_gateway: GatewayServer) -> None:
    stop = threading.Event()
    socks = [_open(slow_gateway, "POST /admin/login",
                   {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "100000"})
             for _ in range(20)]
    tricklers = [threading.Thread(target=_trickle, args=(s, IDLE / 4, stop), daemon=True) for s in socks]
    for thread in tricklers:
        thread.start()
    try:
        time.sleep(0.5)   # all twenty are connected and sending
        # 20 connections is the worker's whole capacity: without the cap this hangs.
        assert requests.get(slow_gateway.url + "/health", timeout=TOTAL - 1).status_code == 200
        answers = [_answer(s) for s in socks]
    finally:
        stop.set()
        for thread in tricklers:
            thread.join()
        for s in socks:
            s.close()
    statuses = sorted(status for status, _, _, _ in answers)
    assert statuses == [408] * 8 + [429] * 12, statuses
    assert all(closed for _, _, _, closed in answers)
    assert requests.get(slow_gateway.url + "/health", timeout=5).status_code == 200


@pytest.mark.parametrize("path", ["/admin/login", "/v1/chat/completions", "/proxy/nowhere/up"])
@pytest.mark.parametrize("broken", [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXY0\r\n\r\n", b"3\r\nabc"])
def test_a_malformed_chunked_body_answers_400_without_a_traceback(world: World, slow_gateway: GatewayServer,
                                                                  path: str, broken: bytes) -> None:
    if path.startswith("/proxy"):
        path = _http_backend(world)
    content_type = "application/x-www-form-urlencoded" if path == "/admin/login" else "application/json"
    sock = _open(slow_gateway, f"POST {path}", {"Authorization": f"Bearer {world.key}", "Content-Type": content_type,
                                                "Transfer-Encoding": "chunked"})
    sock.sendall(broken)
    if broken.endswith(b"abc"):
        sock.shutdown(socket.SHUT_WR)   # the client vanishes mid-chunk
    try:
        status, _, body, _ = _answer(sock)
    finally:
        sock.close()
    assert status == 400, body
    assert json.loads(body)["error"]
    assert "Traceback" not in slow_gateway.output()
