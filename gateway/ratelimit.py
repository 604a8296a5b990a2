"""Flask-Limiter, bound to the configured storage (memcached in production, memory://
for a single process), plus the failure throttles built on the same storage.

One process-wide memcached client per worker (``client_getter``): limits keeps its
client in a thread-local, which gevent makes per-greenlet, so without this every
in-flight request would open its own connection (STACK_NOTES).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask, request
from flask_limiter import Limiter
from limits import parse as parse_limit

log = logging.getLogger("gateway.ratelimit")


def client_ip() -> str:
    """The client's address (ProxyFix has already applied TRUSTED_PROXY_COUNT); never empty,
    because an empty key makes Flask-Limiter silently skip the limit."""
    return request.remote_addr or "unknown"


limiter = Limiter(key_func=client_ip, headers_enabled=True)

_client_lock = threading.Lock()
_clients: dict[str, Any] = {}


def _memcached_options(app: Flask) -> dict[str, Any]:
    timeout = app.config["RATELIMIT_STORAGE_TIMEOUT"]

    def client_getter(client_class, servers, *args, **kwargs):  # type: ignore[no-untyped-def]
        key = repr(servers)
        with _client_lock:
            client = _clients.get(key)
            if client is None:
                client = client_class(servers, *args, **kwargs)
                _clients[key] = client
            return client

    return {"connect_timeout": timeout, "timeout": timeout, "client_getter": client_getter}


def init_app(app: Flask) -> None:
    uri = app.config["RATELIMIT_STORAGE_URI"]
    app.config["RATELIMIT_STORAGE_URI"] = uri
    app.config["RATELIMIT_HEADERS_ENABLED"] = True
    app.config["RATELIMIT_SWALLOW_ERRORS"] = app.config["RATELIMIT_FAIL_OPEN"]
    if uri.startswith("memcached"):
        app.config["RATELIMIT_STORAGE_OPTIONS"] = _memcached_options(app)
    limiter.init_app(app)


class FailureThrottle:
    """Counts failures per identity (address, username) and blocks further attempts once
    ``limit`` is reached - so guessing keys or passwords gets 429 long before it works."""

    def __init__(self, scope: str, limit: str):
        self.scope = scope
        self.limit_text = limit
        self.item = parse_limit(limit)

    def _strategy(self):  # type: ignore[no-untyped-def]
        return limiter.limiter

    def blocked(self, identity: str) -> bool:
        try:
            return not self._strategy().test(self.item, self.scope, identity)
        except Exception as exc:  # storage down: fail open, logged (policy in README)
            log.warning("failure throttle %s: storage error %s; failing open", self.scope, type(exc).__name__)
            return False

    def record(self, identity: str) -> None:
        try:
            self._strategy().hit(self.item, self.scope, identity)
        except Exception as exc:
            log.warning("failure throttle %s: storage error %s", self.scope, type(exc).__name__)

    def retry_after(self, identity: str) -> int:
        try:
            reset, _remaining = self._strategy().get_window_stats(self.item, self.scope, identity)
            import time

            return max(1, int(reset - time.time()) + 1)
        except Exception:
            return 60
