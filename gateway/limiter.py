"""Flask-Limiter, bound to the configured storage (memcached in production, memory://
for a single process), plus the failure throttles built on the same storage.

One memcached client per worker (``StorageHealth.client``, limits' ``client_getter``):
limits keeps its client in a thread-local, which gevent makes per-greenlet, so without
this every in-flight request would open its own connection (see docs/architecture.md,
Memcached client). The shared client is a
``PooledClient`` (one server) or a pooled ``HashClient`` (several), because a bare
pymemcache ``Client`` is one socket and greenlets would interleave on it; the pool
only grows to the number of *simultaneous* storage calls, not of open streams.

Storage outages are tracked per worker (``StorageHealth``, in the worker's state) for
every user of the storage (proxy limits and failure throttles): the first error of an
outage is logged once, each failed call is counted (``StorageHealth.errors``), and the
first success afterwards logs the recovery.
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

from .addresses import client_ip
from .worker_state import state_of, worker_state

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


limiter = Limiter(key_func=client_ip, headers_enabled=True)


@limiter.request_filter
def _proxy_counts_itself() -> bool:
    """The proxy blueprint calls its limits explicitly (``proxy.rate_checks``) and has no
    decorated ones, so Flask-Limiter's own per-request pass (resolving default and
    decorated limits for the endpoint) is skipped for it: ~3% of a proxied request."""
    return request.blueprint == "proxy"

def _memcached_options(app: Flask) -> dict[str, Any]:
    timeout = app.config["RATELIMIT_STORAGE_TIMEOUT"]
    state = state_of(app)

    def client_getter(module: Any, hosts: list[Any], **options: Any) -> Any:
        return state.storage.client(module, hosts, **options)  # the state of now, also after a reset

    # No max_pool_size: a full pool raises instead of waiting (see docs/architecture.md, Memcached client).
    return {"connect_timeout": timeout, "timeout": timeout, "client_getter": client_getter}


def init_app(app: Flask) -> None:
    uri = app.config["RATELIMIT_STORAGE_URI"]
    app.config["RATELIMIT_HEADERS_ENABLED"] = True
    app.config["RATELIMIT_SWALLOW_ERRORS"] = app.config["RATELIMIT_FAIL_OPEN"]
    if uri.startswith("memcached"):
        app.config["RATELIMIT_STORAGE_OPTIONS"] = _memcached_options(app)
    limiter.init_app(app)


# -- outage tracking ---------------------------------------------------------------

class StorageHealth:
    """The rate-limit storage as this worker sees it: its pooled memcached clients, and
    whether it is inside an outage (since when, how many calls failed). Part of the
    worker's state (``WorkerState.storage``); every user of the storage - proxy limits,
    token counts after the response, failure throttles - reports here, so an outage is
    logged once and its recovery once, whoever meets it."""

    def __init__(self) -> None:
        self._client_lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self.down_since: float | None = None
        self.errors = 0  # failed storage calls since the worker (or its last reset) started
        self.exported = 0  # how many of them the Prometheus counter already has

    def client(self, module: Any, hosts: list[Any], **options: Any) -> Any:
        """limits calls this (``client_getter``) with the pymemcache *module*
        (``pymemcache.client`` for one server, ``pymemcache.client.hash`` for several),
        the hosts and our options; it answers one pooled client per server list."""
        key = repr(hosts)
        with self._client_lock:
            client = self._clients.get(key)
            if client is None:
                if len(hosts) > 1:
                    client = module.HashClient(hosts, use_pooling=True, dead_timeout=DEAD_SERVER_RETRY_SECONDS,
                                               retry_timeout=0.5, **options)
                else:
                    client = module.PooledClient(hosts[0], **options)
                self._clients[key] = client
            return client

    @property
    def down(self) -> bool:
        """True while inside a storage outage (the last call failed)."""
        return self.down_since is not None

    def failed(self, exc: BaseException, policy: str) -> None:
        self.errors += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error("rate-limit storage unavailable (%s: %s); failing %s until it returns",
                      type(exc).__name__, exc, policy)

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("rate-limit storage recovered after %.1fs (%d failed calls so far)",
                        time.monotonic() - self.down_since, self.errors)
            self.down_since = None

    def _drop_connections(self) -> None:
        """Close every pooled memcached connection, so the next call connects afresh
        (after a memcached restart every pooled socket is dead)."""
        with self._client_lock:
            clients = list(self._clients.values())
        for client in clients:
            pooled = client.clients.values() if hasattr(client, "clients") else [client]
            for each in pooled:
                each.client_pool.clear()

    def call(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` against the storage. While the storage is healthy, a failure is
        retried once on fresh connections: pooled sockets opened before a memcached restart
        fail on first use, and that must not open the limits for a request. During an outage
        there is no retry, so a blackholed server costs one timeout per call, not two."""
        try:
            return operation()
        except STORAGE_ERRORS:
            if self.down:
                raise
            self._drop_connections()
            return operation()


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
        health = worker_state().storage
        try:
            allowed = health.call(lambda: limiter.limiter.test(self.item, self.scope, identity))
        except STORAGE_ERRORS as exc:
            health.failed(exc, "open (failure throttles)")
            return False
        health.ok()
        if allowed and cache_seconds > 0 and failures_before == self._failures_recorded:
            if len(self._clear_until) >= self.CLEAR_CACHE_LIMIT:
                self._clear_until.clear()
            self._clear_until[identity] = time.monotonic() + cache_seconds
        return not allowed

    def count_failure(self, identity: str) -> None:
        self._failures_recorded += 1
        self._clear_until.pop(identity, None)
        health = worker_state().storage
        try:
            health.call(lambda: limiter.limiter.hit(self.item, self.scope, identity))
        except STORAGE_ERRORS as exc:
            health.failed(exc, "open (failure throttles)")
            return
        health.ok()

    def retry_after(self, identity: str) -> int:
        try:
            reset, _remaining = limiter.limiter.get_window_stats(self.item, self.scope, identity)
        except STORAGE_ERRORS as exc:
            worker_state().storage.failed(exc, "open (failure throttles)")
            return 60
        return max(1, int(reset - time.time()) + 1)


def throttle_for(scope: str, setting: str, factor: int = 1) -> FailureThrottle:
    """The failure throttle ``scope`` sized by ``factor`` x the per-minute setting
    ``setting`` of the current app, kept in the worker's state (one object per scope and
    limit)."""
    limit = f"{current_app.config[setting] * factor}/minute"
    throttles = worker_state().throttles
    found = throttles.get((scope, limit))
    if found is None:
        found = throttles[(scope, limit)] = FailureThrottle(scope, limit)
    return found
