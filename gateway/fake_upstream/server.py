"""Routing, credentials, key-driven failure modes, the ``/_fake`` control API and the
generic pass-through helpers of the fake upstream.

Every request except ``/_fake/*`` is recorded (bounded), so tests can prove what
reached the upstream: which credential, which headers, which body fields.
"""
from __future__ import annotations

import hashlib
import re
import socket
import sys
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent.server import StreamServer

from . import gemini, providers, responses
from .http import BadRequest, Connection, ConnectionClosed, Request
from .prompts import Directives, last_user_text

HANG_SECONDS = 60.0
SLOW_SECONDS = 0.2
RECORD_LIMIT = 5000
BYTES_CHUNK = 64 * 1024
KEY_FAILURES = {"fail401": 401, "fail403": 403, "fail429": 429, "fail500": 500, "fail503": 503}
KEY_FAILURE_MESSAGES = {401: "Incorrect API key provided", 403: "This key may not use this resource",
                        429: "Rate limit reached", 500: "The server had an error", 503: "The engine is overloaded"}


class FakeState:
    """What the control API exposes; one per server process."""

    def __init__(self) -> None:
        self.requests: deque[dict[str, Any]] = deque(maxlen=RECORD_LIMIT)
        self.by_key: Counter[str] = Counter()
        self.total = 0

    def record(self, request: Request, key: str | None) -> None:
        self.total += 1
        if key:
            self.by_key[key] += 1
        echo = request.path.startswith("/echo/")
        self.requests.append({"method": request.method, "path": request.path, "query": request.query,
                              "headers": dict(request.headers), "body_len": len(request.body),
                              "body": None if echo else request.json})

    def reset(self) -> None:
        self.requests.clear()
        self.by_key.clear()
        self.total = 0


def _openai_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() or None if auth[:7].lower() == "bearer " else None


def _anthropic_key(request: Request) -> str | None:
    return request.headers.get("x-api-key") or None


def misbehave_by_key(conn: Connection, key: str, error: Callable[[int, str], dict[str, Any]]) -> bool:
    """The failure modes an upstream key names (``reset``, ``hang``, ``slow``,
    ``fail<status>``), one rule for every provider shape; True when it answered."""
    if "reset" in key:
        conn.reset()
    if "hang" in key:
        gevent.sleep(HANG_SECONDS)
        conn.reset()
    if "slow" in key:
        gevent.sleep(SLOW_SECONDS)
    for marker, status in KEY_FAILURES.items():
        if marker in key:
            headers = [("Retry-After", "2")] if status == 429 else []
            conn.send_json(status, error(status, KEY_FAILURE_MESSAGES[status]), headers)
            return True
    return False


class FakeUpstream:
    """Dispatches one request; one instance serves every connection."""

    def __init__(self) -> None:
        self.state = FakeState()
        self.responses = responses.ResponseStore()

    def handle_connection(self, sock: socket.socket, _address: Any) -> None:
        # Streams are many small writes; without NODELAY, Nagle plus delayed ACKs add
        # ~40 ms per event pair and make every stream benchmark measure the fake.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock)
        try:
            while True:
                try:
                    request = conn.read_request()
                except BadRequest as exc:
                    conn.keep_alive = False
                    conn.send_json(400, {"error": {"code": "bad_request", "message": str(exc)}})
                    break
                if request is None:
                    break
                self.dispatch(conn, request)
                if not conn.keep_alive:
                    break
        except (ConnectionClosed, OSError):
            pass   # the client left or we reset on purpose; nothing to answer
        finally:
            sock.close()

    def dispatch(self, conn: Connection, request: Request) -> None:
        path, method = request.path, request.method
        if path.startswith("/_fake/"):
            self.control(conn, request)
            return
        if path.startswith("/v1beta/") or gemini.is_v1_method(path):
            key = gemini.key_of(request)
            self.state.record(request, key)
            gemini.serve(conn, request, key, misbehave_by_key)
            return
        anthropic = path.startswith("/v1/messages")
        # Either header on every route: anthropic SDK 2.x sends its api_key as a Bearer
        # token, and /v1/models is shared by both families.
        key = _anthropic_key(request) or _openai_key(request) if anthropic else (
            _openai_key(request) or _anthropic_key(request))
        self.state.record(request, key)
        if path == "/health":
            conn.send_json(200, {"status": "ok"})
        elif path.startswith("/echo/"):
            self.echo(conn, request)
        elif path.startswith("/bytes/") and method == "GET":
            self.send_bytes(conn, path[len("/bytes/"):])
        elif path.startswith("/v1/"):
            self.provider(conn, request, key, anthropic)
        else:
            conn.send_json(404, {"error": {"code": "not_found", "message": f"No route for {method} {path}"}})

    def provider(self, conn: Connection, request: Request, key: str | None, anthropic: bool) -> None:
        error: Callable[[int, str], dict[str, Any]] = (
            providers.anthropic_error if anthropic else providers.openai_error)
        if key is None:
            conn.send_json(401, error(401, "x-api-key or Authorization header is required" if anthropic
                                      else "You didn't provide an API key in the Authorization header"))
            return
        if anthropic and "anthropic-version" not in request.headers:
            conn.send_json(400, error(400, "anthropic-version: header is required"))
            return
        if misbehave_by_key(conn, key, error):
            return
        route = _route(request.method, request.path)
        if route is None:
            conn.send_json(404, error(404, f"Unknown route {request.method} {request.path}"))
            return
        if route == "models":
            model_id = request.path[len("/v1/models/"):] if request.path.startswith("/v1/models/") else ""
            providers.openai_models(conn, model_id.rstrip("/") or None)
            return
        if route == "response_object":
            responses.follow_up(conn, self.responses, key, request)
            return
        body = request.json
        if not isinstance(body, dict):
            conn.send_json(400, error(400, "The request body must be a JSON object"))
            return
        directives = Directives.parse(last_user_text(body))
        if directives.delay:
            gevent.sleep(directives.delay)
        if directives.status is not None and directives.status >= 400:
            headers = [("Retry-After", directives.retry_after)] if directives.retry_after else []
            conn.send_json(directives.status, error(directives.status, f"Fake failure {directives.status}"),
                           headers)
            return
        if route == "chat":
            providers.openai_generate(conn, body, directives, chat=True)
        elif route == "completions":
            providers.openai_generate(conn, body, directives, chat=False)
        elif route == "responses":
            responses.create(conn, self.responses, key, body, directives)
        elif route == "embeddings":
            providers.openai_embeddings(conn, body, directives)
        elif route == "messages":
            providers.anthropic_messages(conn, body, directives)
        else:
            providers.anthropic_count_tokens(conn, body)

    def control(self, conn: Connection, request: Request) -> None:
        route = (request.method, request.path)
        if route == ("POST", "/_fake/reset"):
            self.state.reset()
            self.responses.reset()
            conn.send_json(200, {"ok": True})
        elif route == ("GET", "/_fake/requests"):
            conn.send_json(200, {"requests": list(self.state.requests)})
        elif route == ("GET", "/_fake/stats"):
            conn.send_json(200, {"total": self.state.total, "by_key": dict(self.state.by_key)})
        else:
            conn.send_json(404, {"error": {"code": "not_found", "message": "unknown control route"}})

    def echo(self, conn: Connection, request: Request) -> None:
        conn.send_json(200, {"method": request.method, "path": request.path, "query": request.query,
                             "headers": request.headers, "body_len": len(request.body),
                             "body_sha256": hashlib.sha256(request.body).hexdigest()})

    def send_bytes(self, conn: Connection, raw: str) -> None:
        if not raw.isdigit():
            conn.send_json(400, {"error": {"code": "bad_request", "message": "size must be a number"}})
            return
        remaining = int(raw)
        block = bytes(range(256)) * (BYTES_CHUNK // 256)
        conn.send_head(200, [("Content-Type", "application/octet-stream"), ("Content-Length", str(remaining))])
        while remaining > 0:
            piece = block[:min(remaining, BYTES_CHUNK)]
            conn.sock.sendall(piece)
            remaining -= len(piece)


_ROUTES = {
    ("POST", "/v1/chat/completions"): "chat",
    ("POST", "/v1/completions"): "completions",
    ("POST", "/v1/embeddings"): "embeddings",
    ("POST", "/v1/messages"): "messages",
    ("POST", "/v1/messages/count_tokens"): "count_tokens",
    ("GET", "/v1/models"): "models",
    ("POST", "/v1/responses"): "responses",
}
_MODEL_PATH = re.compile(r"/v1/models/[\w.:-]+")
_RESPONSE_PATHS = {"GET": re.compile(r"/v1/responses/[\w-]+(/input_items)?"),
                   "DELETE": re.compile(r"/v1/responses/[\w-]+"),
                   "POST": re.compile(r"/v1/responses/[\w-]+/cancel")}


def _route(method: str, path: str) -> str | None:
    path = path.rstrip("/") or path
    if method == "GET" and _MODEL_PATH.fullmatch(path):
        return "models"
    response_path = _RESPONSE_PATHS.get(method)
    if response_path is not None and response_path.fullmatch(path):
        return "response_object"
    return _ROUTES.get((method, path))


def run(host: str = "127.0.0.1", port: int = 8090) -> None:
    """Serve until killed; prints the listening line (flushed) once ready, so a parent
    process started with ``--port 0`` learns the port it got."""
    app = FakeUpstream()
    server = StreamServer((host, port), app.handle_connection, backlog=2048)
    server.start()
    print(f"fake upstream listening on http://{host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(timeout=1)
        sys.stdout.flush()
