"""Flask-Limiter, bound to the configured storage (memcached in production, memory://
for a single process), plus the failure throttles built on the same storage.

One process-wide memcached client per worker (``client_getter``): limits keeps its
client in a thread-local, which gevent makes per-greenlet, so without this every
in-flight request would open its own connection (STACK_NOTES). The shared client is a
``PooledClient`` (one server) or a pooled ``HashClient`` (several), because a bare
pymemcache ``Client`` is one socket and greenlets would interleave on it; the pool
only grows to the number of *simultaneous* storage calls, not of open streams.

Storage outages are tracked here for every user of the storage (proxy limits and
failure throttles): the first error of an outage is logged once, each failed call is
counted (``storage_errors()``), and the first success afterwards logs the recovery.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, request
from flask_limiter import Limiter
from limits import parse as parse_limit
from limits.errors import StorageError

log = logging.getLogger("gateway.limiter")
T = TypeVar("T")

try:  # pymemcache is a requirement, but memory:// deployments do not need it loaded
    from pymemcache.exceptions import MemcacheError

    STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, StorageError, MemcacheError)
except ImportError:  # pragma: no cover
    STORAGE_ERRORS = (OSError, StorageError)
# Anything else (TypeError, KeyError...) is a bug and must surface as one, not be
# mistaken for an outage and silently "fail open".

# How long a server of several is left out after it failed (pymemcache's default is 60 s).
DEAD_SERVER_RETRY_SECONDS = 5


def client_ip() -> str:
    """The client's address (ProxyFix has already applied TRUSTED_PROXY_COUNT); never empty,
    because an empty key makes Flask-Limiter silently skip the limit."""
    return request.remote_addr or "unknown"


limiter = Limiter(key_func=client_ip, headers_enabled=True)


@limiter.request_filter
def _proxy_counts_itself() -> bool:
    """The proxy blueprint calls its limits explicitly (``proxy.rate_checks``) and has no
    decorated ones, so Flask-Limiter's own per-request pass (resolving default and
    decorated limits for the endpoint) is skipped for it: ~3% of a proxied request."""
    return request.blueprint == "proxy"

_client_lock = threading.Lock()
_clients: dict[str, Any] = {}


def client_getter(module: Any, hosts: list[Any], **options: Any) -> Any:
    """limits calls this with the pymemcache *module* (``pymemcache.client`` for one
    server, ``pymemcache.client.hash`` for several), the hosts and our options; it answers
    one pooled client per process and server list."""
    key = repr(hosts)
    with _client_lock:
        client = _clients.get(key)
        if client is None:
            if len(hosts) > 1:
                client = module.HashClient(hosts, use_pooling=True, dead_timeout=DEAD_SERVER_RETRY_SECONDS,
                                           retry_timeout=0.5, **options)
            else:
                client = module.PooledClient(hosts[0], **options)
            _clients[key] = client
        return client


def _memcached_options(app: Flask) -> dict[str, Any]:
    timeout = app.config["RATELIMIT_STORAGE_TIMEOUT"]
    # No max_pool_size: a full pool raises instead of waiting (STACK_NOTES).
    return {"connect_timeout": timeout, "timeout": timeout, "client_getter": client_getter}


def init_app(app: Flask) -> None:
    uri = app.config["RATELIMIT_STORAGE_URI"]
    app.config["RATELIMIT_STORAGE_URI"] = uri
    app.config["RATELIMIT_HEADERS_ENABLED"] = True
    app.config["RATELIMIT_SWALLOW_ERRORS"] = app.config["RATELIMIT_FAIL_OPEN"]
    if uri.startswith("memcached"):
        app.config["RATELIMIT_STORAGE_OPTIONS"] = _memcached_options(app)
    limiter.init_app(app)


def uses_process_local_storage(uri: str) -> bool:
    """True for storage that each worker process keeps to itself (limits x workers)."""
    return uri.startswith("memory")


# -- outage tracking ---------------------------------------------------------------
_down_since: float | None = None
_errors = 0


def storage_errors() -> int:
    """Rate-limit storage calls that failed in this process since it started (for the
    metrics exporter; each failure was answered by the configured policy)."""
    return _errors


def storage_down() -> bool:
    """True while this process is inside a storage outage (last call failed)."""
    return _down_since is not None


def storage_failed(exc: BaseException, policy: str) -> None:
    global _down_since, _errors
    _errors += 1
    if _down_since is None:
        _down_since = time.monotonic()
        log.error("rate-limit storage unavailable (%s: %s); failing %s until it returns",
                  type(exc).__name__, exc, policy)


def storage_ok() -> None:
    global _down_since
    if _down_since is not None:
        log.warning("rate-limit storage recovered after %.1fs (%d failed calls so far)",
                    time.monotonic() - _down_since, _errors)
        _down_since = None


def _drop_connections() -> None:
    """Close every pooled memcached connection of this process, so the next call
    connects afresh (after a memcached restart every pooled socket is dead)."""
    with _client_lock:
        clients = list(_clients.values())
    for client in clients:
        pooled = client.clients.values() if hasattr(client, "clients") else [client]
        for each in pooled:
            each.client_pool.clear()


def call_storage(operation: Callable[[], T]) -> T:
    """Run ``operation`` against the storage. While the storage is healthy, a failure is
    retried once on fresh connections: pooled sockets opened before a memcached restart
    fail on first use, and that must not open the limits for a request. During an outage
    there is no retry, so a blackholed server costs one timeout per call, not two."""
    try:
        return operation()
    except STORAGE_ERRORS:
        if storage_down():
            raise
        _drop_connections()
        return operation()


def storage_reachable() -> bool:
    """One cheap round trip to the storage, for readiness checks."""
    return bool(limiter.storage.check())


class FailureThrottle:
    """Counts failures per identity (address, username) and blocks further attempts once
    ``limit`` is reached - so guessing keys or passwords gets 429 long before it works.

    Fails open when the storage is down, whatever RATELIMIT_FAIL_OPEN says: user keys
    carry 190+ random bits, so an outage does not make guessing them feasible, and
    failing closed would lock every admin out of the portal during the outage."""

    CLEAR_CACHE_LIMIT = 50_000

    def __init__(self, scope: str, limit: str):
        self.scope = scope
        self.limit_text = limit
        self.item = parse_limit(limit)
        # identity -> monotonic time until which "not blocked" is taken from memory
        self._clear_until: dict[str, float] = {}
        self._failures_recorded = 0  # a "not blocked" read across a failure is not kept

    def blocked(self, identity: str, cache_seconds: float = 0.0) -> bool:
        """True once ``identity`` reached the limit. With ``cache_seconds`` a "not
        blocked" answer is reused that long by this worker (a failure it records itself
        drops it at once), so a caller who never fails costs no storage round trip per
        request; a block caused by other workers is seen within ``cache_seconds``."""
        if cache_seconds > 0:
            until = self._clear_until.get(identity)
            if until is not None and until > time.monotonic():
                return False
        failures_before = self._failures_recorded
        try:
            allowed = call_storage(lambda: limiter.limiter.test(self.item, self.scope, identity))
        except STORAGE_ERRORS as exc:
            storage_failed(exc, "open (failure throttles)")
            return False
        storage_ok()
        if allowed and cache_seconds > 0 and failures_before == self._failures_recorded:
            if len(self._clear_until) >= self.CLEAR_CACHE_LIMIT:
                self._clear_until.clear()
            self._clear_until[identity] = time.monotonic() + cache_seconds
        return not allowed

    def count_failure(self, identity: str) -> None:
        self._failures_recorded += 1
        self._clear_until.pop(identity, None)
        try:
            call_storage(lambda: limiter.limiter.hit(self.item, self.scope, identity))
        except STORAGE_ERRORS as exc:
            storage_failed(exc, "open (failure throttles)")
            return
        storage_ok()

    def retry_after(self, identity: str) -> int:
        try:
            reset, _remaining = limiter.limiter.get_window_stats(self.item, self.scope, identity)
        except STORAGE_ERRORS as exc:
            storage_failed(exc, "open (failure throttles)")
            return 60
        return max(1, int(reset - time.time()) + 1)


_throttles: dict[tuple[str, str], FailureThrottle] = {}


def throttle_for(scope: str, setting: str) -> FailureThrottle:
    """The failure throttle ``scope`` sized by the per-minute setting ``setting`` of the
    current app (one object per scope and limit, so apps with other settings - tests -
    get their own)."""
    limit = f"{current_app.config[setting]}/minute"
    found = _throttles.get((scope, limit))
    if found is None:
        found = _throttles[(scope, limit)] = FailureThrottle(scope, limit)
    return found
