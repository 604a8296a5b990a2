"""Everything a worker keeps in memory between requests, in one object the app owns.

A gunicorn worker serves from caches and counters of its own: the snapshot of keys,
backends and the upstream pool, the quota period-row ids, the round-robin positions
and decrypted upstream secrets, the known ends of rate-limit windows, the pooled HTTP
sessions and the failover retry budget, the failure throttles and the rate-limit
storage's health. Together they are the worker's state machine, so they live in one
``WorkerState`` stored on the app (``app.extensions["keygate.state"]``): two apps in
one process (tests) never share a cache, and ``reset()`` returns a worker to the state
of a fresh one as a unit - nothing is half-forgotten.

Request code reaches it with ``worker_state()`` (one lookup on the current app).
Code that runs after the request context is gone - the relay generator and the
accounting it does, background loops - is handed the object explicitly.

What deliberately stays module-level: the Flask-Limiter ``Limiter`` (an extension
object like ``db``, bound in ``init_app``), the Prometheus metric objects (process
globals by design of prometheus_client, summed across workers by its multiprocess
mode) with the set of model labels they already carry, constants, and pure memo
caches whose values are a function of their key alone (parsed limit strings,
normalised URLs), which cannot go stale. See docs/architecture.md, Per-worker state.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    from datetime import datetime

    import requests

    from .body_deadline import Slots
    from .forwarding_check import ForwardingCheck
    from .limiter import FailureThrottle, StorageHealth
    from .proxy.forward import RetryBudget
    from .proxy.pool import PoolState
    from .proxy.snapshot import Snapshot

EXTENSION = "keygate.state"


class WorkerState:
    """The per-worker caches and counters of one app (see the module docstring)."""

    snapshot: Snapshot
    pool: PoolState
    storage: StorageHealth
    # (user id, period start) -> the usage_counters row id (``proxy.quota``)
    counter_ids: dict[tuple[int, datetime], int]
    # (scope, limit) -> failure throttle (``limiter.throttle_for``)
    throttles: dict[tuple[str, str], FailureThrottle]
    # BLOCK_PRIVATE_UPSTREAMS -> the pooled upstream session (``proxy.forward``)
    sessions: dict[bool, requests.Session]
    # (ratio, minimum) -> this worker's failover retry budget (``proxy.forward``)
    budgets: dict[tuple[float, int], RetryBudget]
    # client identity -> request bodies being read now (``body_deadline``)
    body_reads: Slots
    # requests from a loopback proxy not trusted (``forwarding_check``), for /ready
    forwarding: ForwardingCheck

    def __init__(self) -> None:
        self.lock = threading.Lock()  # creating a session or a budget (a gevent lock once patched)
        self.reset()

    def reset(self) -> None:
        """Forget every cache and counter at once: afterwards the worker behaves as a
        fresh one would (the next request re-reads the generation counters and every
        key it meets, and opens new upstream connections). Open upstream sessions are
        closed; a request in flight keeps the objects it already holds."""
        from .body_deadline import Slots
        from .forwarding_check import ForwardingCheck
        from .limiter import StorageHealth
        from .proxy.pool import PoolState
        from .proxy.snapshot import Snapshot

        old_sessions = list(getattr(self, "sessions", {}).values())
        self.snapshot = Snapshot()
        self.pool = PoolState()
        self.storage = StorageHealth()
        self.counter_ids = {}
        self.throttles = {}
        self.sessions = {}
        self.budgets = {}
        self.body_reads = Slots()
        self.forwarding = ForwardingCheck()
        for session in old_sessions:
            session.close()


def install(app: Flask) -> WorkerState:
    """Create the app's worker state (``create_app`` calls this before any extension
    that uses it is bound)."""
    state = app.extensions[EXTENSION] = WorkerState()
    return state


def worker_state() -> WorkerState:
    """The current app's worker state (inside an app or request context only)."""
    state: WorkerState = current_app.extensions[EXTENSION]
    return state


def state_of(app: Flask) -> WorkerState:
    """``app``'s worker state, without an app context (background loops, tests)."""
    state: WorkerState = app.extensions[EXTENSION]
    return state
