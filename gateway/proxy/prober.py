"""Active health probes: bring unhealthy upstream keys back without spending client
requests on them.

Every ``PROBE_INTERVAL_SECONDS`` (default 30) each worker's background loop tries to
take the ``upstream-prober`` lease - one row in ``leases`` taken or renewed by a
single conditional UPDATE (or INSERT for the very first time), so exactly one worker
across the whole deployment holds it; the holder renews it every round, and when it
dies the lease expires after two intervals and another worker takes over. The holder
probes every enabled key of every enabled backend that is ``unhealthy`` or whose
cooldown has ended, concurrently, each with ``PROBE_TIMEOUT_SECONDS`` (default 5):

- openai backends: ``GET <base_url>/models``; anthropic: ``GET <base_url>/v1/models``;
  gemini: ``GET <base_url>/v1beta/models``;
  http backends only when they have a ``health_check_path``; a backend's own
  ``health_check_path`` always wins;
- the key's credential is sent as for real traffic, redirects are not followed, and
  the URL-safety deny-list applies (the same session as the proxy);
- the answer's verdict (``verdict``, shared with the portal's test-connection): a
  2xx/3xx answer is a success (two in a row revive the key), 401/403/429/5xx and
  network errors are failures with the usual consequences; other 4xx say the health
  path is wrong, not the key, so they are inconclusive: logged, and change nothing.
  A probe carries no client content, so its 401/403 is the only evidence that
  disables a key (live traffic's 401/403 only makes it unhealthy, see ``pool``).

``second_opinion`` sends the same content-free probe for one key from inside a
request, when a failed answer could be the request's fault and no other key can be
asked (see ``fault``).

Healthy keys are not probed: live traffic already tells us about them, and a probe
costs provider quota. ``flask probe-upstreams`` runs one round by hand.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import requests
from flask import Flask, current_app
from sqlalchemy import or_, select
from sqlalchemy.engine import Engine

from .. import background, leases
from ..extensions import db
from ..models import Backend, UpstreamKey
from ..timeutil import utcnow
from ..worker_state import WorkerState, state_of
from . import forward, pool

log = logging.getLogger("gateway.prober")

LEASE_NAME = "upstream-prober"
MAX_CONCURRENT_PROBES = 16
DEFAULT_PATHS = {"openai": "/models", "anthropic": "/v1/models", "gemini": "/v1beta/models"}


@dataclass(frozen=True)
class ProbeResult:
    key_id: int
    backend: str
    ok: bool | None  # None: inconclusive (the health path, not the key, looks wrong)
    status: int | None
    detail: str
    retry_after: float | None = None


def verdict(status: int) -> bool | None:
    """What a health-check answer says about the key: True (2xx/3xx: the credential
    works; a redirect is not followed but proves the key was accepted), False (401/403:
    a dead credential, 429: rate limited, 5xx: the provider is failing), None for any
    other 4xx (the health path is wrong for this backend, which says nothing about the
    key). One rule for the background prober and the portal's test-connection."""
    if 200 <= status < 400:
        return True
    if status in (401, 403, 429) or status >= 500:
        return False
    return None


class _ProbeTarget(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def base_url(self) -> str: ...
    @property
    def health_check_path(self) -> str | None: ...


def probe_url(backend: _ProbeTarget) -> str | None:
    path = backend.health_check_path or DEFAULT_PATHS.get(backend.kind)
    if not path:
        return None
    return backend.base_url.rstrip("/") + "/" + path.lstrip("/")


def _due(now: datetime) -> Any:
    """Keys worth a probe: unhealthy ones, and cooling ones whose cooldown is over."""
    return or_(UpstreamKey.state == "unhealthy",
               (UpstreamKey.state == "cooling_down") & or_(UpstreamKey.cooldown_until.is_(None),
                                                            UpstreamKey.cooldown_until <= now))


def _probe(session: requests.Session, job: tuple[int, str, str, str, str], timeout: float) -> ProbeResult:
    key_id, name, kind, url, secret = job
    headers = forward.credential_headers(kind, secret, {})
    try:
        response = session.get(url, headers=headers, timeout=(timeout, timeout), allow_redirects=False, stream=True)
    except requests.exceptions.Timeout:
        return ProbeResult(key_id, name, False, None, "probe timed out")
    except requests.RequestException as exc:
        return ProbeResult(key_id, name, False, None, f"probe connection error: {type(exc).__name__}")
    try:
        status, retry_after = response.status_code, forward.retry_after_of(response)
    finally:
        response.close()
    ok = verdict(status)
    if ok is None:
        return ProbeResult(key_id, name, None, status,
                           f"probe answered {status} (check the backend's health_check_path)")
    return ProbeResult(key_id, name, ok, status, f"probe answered {status}", None if ok else retry_after)


def run_round(app: Flask) -> list[ProbeResult]:
    """Probe every key that needs it, once, and record the results. Safe to run from
    several places at once (probes are reads; health updates are conditional)."""
    state = state_of(app)
    with app.app_context():
        engine = db.engine
        timeout = float(app.config["PROBE_TIMEOUT_SECONDS"])
        now = utcnow()
        rows = db.session.execute(
            select(UpstreamKey, Backend).join(Backend, UpstreamKey.backend_id == Backend.id)
            .where(Backend.enabled.is_(True), UpstreamKey.enabled.is_(True), _due(now)).order_by(UpstreamKey.id)
        ).all()
        jobs = []
        for key, backend in rows:
            url = probe_url(backend)
            if url is not None:
                jobs.append((key.id, backend.name, backend.kind, url, pool.secret_of(state.pool, key)))
        db.session.remove()  # no transaction held across network I/O (SQLite under gevent)
        if not jobs:
            return []
        session = forward.session()
        pool.count("probe_round")

        with ThreadPoolExecutor(max_workers=min(MAX_CONCURRENT_PROBES, len(jobs))) as executor:
            results = list(executor.map(lambda job: _probe(session, job, timeout), jobs))
        for result in results:
            _record(state, engine, result)
        return results


def _record(state: WorkerState, engine: Engine, result: ProbeResult) -> None:
    if result.ok:
        pool.count("probe_ok")
        with engine.begin() as conn:
            pool.report_success(state, conn, result.key_id, reason="probe successes")
    elif result.ok is False:
        pool.count("probe_failed")
        pool.report_failure(state, engine, result.key_id, result.status, result.detail, result.retry_after,
                            confirmed=True, max_cooldown=float(current_app.config["MAX_COOLDOWN_SECONDS"]))
    else:
        pool.count("probe_inconclusive")
        log.warning("probe of upstream key %s (backend %s) inconclusive: %s", result.key_id, result.backend,
                    result.detail)


def second_opinion(state: WorkerState, backend_id: int, key_id: int, secret: str,
                   within: float | None = None) -> ProbeResult | None:
    """Probe one key now, content-free, with the prober's request and verdict (None when
    the backend has no health path). Needs an app context; costs one upstream GET, spent
    only on a failure that may be the request's fault; waits at most ``within`` (the
    request's own read timeout) or PROBE_TIMEOUT_SECONDS, whichever is shorter."""
    backend = next((b for b in state.snapshot.backends if b.id == backend_id), None)
    url = probe_url(backend) if backend is not None else None
    if backend is None or url is None:
        return None
    pool.count("second_opinion_probe")
    timeout = float(current_app.config["PROBE_TIMEOUT_SECONDS"])
    if within:
        timeout = min(timeout, within)
    return _probe(forward.session(), (key_id, backend.name, backend.kind, url, secret), timeout)


def start_background(app: object) -> threading.Thread | None:
    """Start this worker's probe loop (a greenlet under gevent). Every worker runs one;
    the lease decides which one probes. Returns None when probing is turned off."""
    if not isinstance(app, Flask):
        return None
    interval = float(app.config["PROBE_INTERVAL_SECONDS"])
    if interval <= 0:
        return None
    holder = leases.holder_id()
    ttl = interval * 2 + float(app.config["PROBE_TIMEOUT_SECONDS"])

    def round_(app: Flask) -> None:
        if background.holds_lease(app, LEASE_NAME, holder, ttl):
            results = run_round(app)
            if results:
                log.info("probe round: %d keys, %d ok, %d failed", len(results),
                         sum(1 for r in results if r.ok), sum(1 for r in results if r.ok is False))

    return background.start_loop(app, "prober", background.periodic(interval), round_)
