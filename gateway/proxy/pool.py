"""The upstream key pool - which provider key serves this request (the request-flow
step after the quota reservation), and what its answer says about that key's health.

Selection is smooth weighted round-robin (nginx's algorithm) over the usable keys of
every backend that serves the model, weight = backend weight x key weight, so the
split follows the weights closely even over short runs. Each worker keeps its own
round-robin position; every worker's sequence follows the weights, so their sum does.
Failover order after the chosen key alternates backends, so a provider that is down
as a whole does not eat every attempt.

Health lives in the database, so every worker sees the same state:

    healthy --429--> cooling_down (until Retry-After, at most MAX_COOLDOWN_SECONDS;
                                   a later, shorter one never shortens it)
    healthy --401/403 from live traffic--> unhealthy (the prober re-checks it content-free)
    any --401/403 from a probe--> disabled (a dead credential; only an admin reset revives it)
    healthy --3 consecutive failures--> unhealthy --2 consecutive successes--> healthy

Live traffic never disables a key: a 401/403 a client's request received is evidence
from that one client (whose request content may have caused it), so it only moves the
key to ``unhealthy``, where a content-free probe decides. Callers (``forward``) report
a live failure only once a second opinion showed it was the key's (see ``fault``).

Every transition is a conditional UPDATE (``WHERE state = <the state we saw>``), so
two workers reporting at once cannot undo each other, and the cooldown end is
extended in SQL (``CASE``) so a concurrent shorter Retry-After cannot shorten it.

When no key is usable, one request at a time gets to try an unhealthy key
(half-open): the trial is claimed by pushing the key's ``cooldown_until`` forward
``HALF_OPEN_INTERVAL_SECONDS`` in one conditional UPDATE, so across all workers at
most one live request per key per interval is spent on a key that is probably dead;
the rest get 503 with a Retry-After. For an unhealthy key ``cooldown_until`` thus
means "next half-open trial"; the active prober (``prober``) also revives keys.

Transitions are logged and counted (``keygate_pool_events``). The round-robin
positions and the decrypted secrets are per-worker state (``PoolState`` in the app's
``WorkerState``).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.engine import Connection, Engine

from .. import generations
from ..extensions import db
from ..models import UpstreamKey
from ..observability import metrics
from ..secrets_box import SecretBox
from ..timeutil import utcnow
from ..worker_state import WorkerState
from .routing import Route
from .snapshot import KeyInfo

log = logging.getLogger("gateway.pool")

FAILURES_TO_UNHEALTHY = 3
SUCCESSES_TO_HEALTHY = 2
DEFAULT_COOLDOWN_SECONDS = 30
DEFAULT_MAX_COOLDOWN_SECONDS = 300  # MAX_COOLDOWN_SECONDS' default: what one answer may impose
HALF_OPEN_INTERVAL_SECONDS = 10
_SECRET_CACHE_LIMIT = 1024
_POSITION_LIMIT = 256


@dataclass(frozen=True)
class Target:
    route: Route
    key_id: int
    secret: str

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"Target(backend={self.route.backend_name!r}, key_id={self.key_id})"


def count(name: str, amount: int = 1) -> None:
    """Count a pool event in Prometheus (bounded names only): ``state_change:<from>-><to>``,
    ``failover_retry``, ``retry_budget_exhausted``, ``half_open_trial``,
    ``no_healthy_upstream``, ``blocked_upstream_address``, ``upstream_redirect_refused``,
    ``probe_ok``, ``probe_failed``, ``probe_inconclusive``, ``probe_round``, ``request_fault``
    (a failure that followed the request across keys: nobody blamed), ``second_opinion_probe``."""
    metrics.POOL_EVENTS.labels(name).inc(amount)


# -- selection --------------------------------------------------------------------------

class PoolState:
    """This worker's selection state: the smooth-WRR position per candidate set (a
    different model may pool different keys) and the decrypted upstream secrets."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.positions: dict[frozenset[int], dict[int, int]] = {}
        self.secrets: dict[str, str] = {}


def _usable(key: KeyInfo, now: datetime) -> bool:
    if not key.enabled or key.state == "disabled":
        return False
    if key.state == "cooling_down":
        return key.cooldown_until is None or key.cooldown_until <= now
    return key.state == "healthy"


def _swrr_order(state: PoolState, weighted: list[tuple[int, int]]) -> list[int]:
    """Pick one id by smooth weighted round-robin; return it first, then the others in
    the order the algorithm would pick them next (highest current weight first)."""
    total = sum(w for _, w in weighted)
    pool = frozenset(i for i, _ in weighted)
    positions = state.positions
    with state.lock:
        current = positions.get(pool)
        if current is None:
            if len(positions) >= _POSITION_LIMIT:
                positions.clear()
            current = positions[pool] = {}
        best = None
        for ident, weight in weighted:
            current[ident] = current.get(ident, 0) + weight
            if best is None or current[ident] > current[best]:
                best = ident
        assert best is not None
        current[best] -= total
        rest = sorted((i for i, _ in weighted if i != best), key=lambda i: -current[i])
    return [best, *rest]


def _spread(order: list[int], backend_of: dict[int, int]) -> list[int]:
    """Keep the chosen key first, then alternate backends (the others first), so the
    first retry after a provider-wide failure goes to a different provider."""
    first, rest = order[0], order[1:]
    queues: OrderedDict[int, list[int]] = OrderedDict()
    for ident in rest:
        queues.setdefault(backend_of[ident], []).append(ident)
    if backend_of[first] in queues:
        queues.move_to_end(backend_of[first])
    spread = [first]
    while queues:
        for backend in list(queues):
            spread.append(queues[backend].pop(0))
            if not queues[backend]:
                del queues[backend]
    return spread


def secret_of(state: PoolState, key: KeyInfo | UpstreamKey) -> str:
    """Decrypted secret, cached per worker by ciphertext (a replaced secret is a new
    ciphertext, so the cache can never serve a stale one). Needs an app context."""
    token = key.secret_encrypted
    secrets = state.secrets
    plain = secrets.get(token)
    if plain is None:
        box: SecretBox = current_app.extensions["keygate.box"]
        plain = box.decrypt(token)
        if len(secrets) >= _SECRET_CACHE_LIMIT:
            secrets.clear()
        secrets[token] = plain
    return plain


def _claim_trial(engine: Engine, key_id: int, now: datetime) -> bool:
    """Claim the half-open trial of an unhealthy key for this request (one per interval,
    across every worker)."""
    due = or_(UpstreamKey.cooldown_until.is_(None), UpstreamKey.cooldown_until <= now)
    with engine.begin() as conn:
        claimed = conn.execute(update(UpstreamKey)
                               .where(UpstreamKey.id == key_id, UpstreamKey.state == "unhealthy", due)
                               .values(cooldown_until=now + timedelta(seconds=HALF_OPEN_INTERVAL_SECONDS))).rowcount
    return bool(claimed)


def candidates(state: WorkerState, routes: list[Route]) -> tuple[list[Target], datetime | None]:
    """Targets to try in order (first = the chosen one), and, when nothing is usable,
    the earliest moment a key may be usable again (for Retry-After; None = unknown)."""
    by_backend = {r.backend_id: r for r in routes}
    if not by_backend:
        return [], None
    configured = state.snapshot.keys_of(list(by_backend))
    if not configured:
        return [], None  # backends without credentials (plain HTTP pass-through): nothing to choose
    keys = [k for k in configured if k.enabled]
    now = utcnow()
    weight = {k.id: by_backend[k.backend_id].weight * max(0, k.weight) for k in keys}
    by_id = {k.id: k for k in keys}
    weighted = [(k.id, weight[k.id]) for k in keys if weight[k.id] > 0 and _usable(k, now)]
    if weighted:
        order = _spread(_swrr_order(state.pool, weighted), {i: by_id[i].backend_id for i, _ in weighted})
        return [Target(by_backend[by_id[i].backend_id], i, secret_of(state.pool, by_id[i])) for i in order], None
    # Nothing usable: a half-open trial on an unhealthy key whose turn has come.
    waiting = [k for k in keys if weight[k.id] > 0 and k.state in ("cooling_down", "unhealthy")]
    due = sorted((k for k in waiting
                  if k.state == "unhealthy" and (k.cooldown_until is None or k.cooldown_until <= now)),
                 key=lambda k: k.cooldown_until or datetime.min)
    for key in due:
        if _claim_trial(db.engine, key.id, now):
            count("half_open_trial")
            log.info("upstream key %s: half-open trial (no usable key for this request)", key.id)
            return [Target(by_backend[key.backend_id], key.id, secret_of(state.pool, key))], None
    count("no_healthy_upstream")
    if not waiting:
        return [], None  # every key disabled (or weight 0): only an admin can help
    ends = [k.cooldown_until for k in waiting if k.cooldown_until and k.cooldown_until > now]
    return [], min(ends, default=now + timedelta(seconds=HALF_OPEN_INTERVAL_SECONDS))


# -- health -----------------------------------------------------------------------------

def _move(state: WorkerState, conn: Connection, key_id: int, seen: str, new: str, reason: str,
          *conditions: Any, **values: Any) -> bool:
    """Transition ``seen -> new`` only if the row is still in ``seen`` (and ``conditions``)."""
    moved = conn.execute(update(UpstreamKey).where(UpstreamKey.id == key_id, UpstreamKey.state == seen, *conditions)
                         .values(state=new, state_changed_at=utcnow(), **values)).rowcount
    if moved:
        generations.bump(generations.ROUTING, conn, state)  # every worker's pool snapshot reloads
        count(f"state_change:{seen}->{new}")
        log.warning("upstream key %s: %s -> %s (%s)", key_id, seen, new, reason)
    return bool(moved)


def _not_before(moment: datetime) -> Any:
    """SQL for max(cooldown_until, moment): a cooldown is only ever extended."""
    return case((and_(UpstreamKey.cooldown_until.is_not(None), UpstreamKey.cooldown_until > moment),
                 UpstreamKey.cooldown_until), else_=moment)


def report_success(state: WorkerState, conn: Connection, key_id: int, reason: str = "consecutive successes",
                   from_live_traffic: bool = False) -> None:
    """A success (live traffic or probe), inside the caller's transaction: resets the
    failure streak; 2 in a row revive an unhealthy key; a success after the cooldown
    ended confirms a cooling key (one that finishes earlier never shortens it)."""
    known = state.snapshot.key_info(key_id) if from_live_traffic else None
    if known is not None and known.state == "healthy" and not known.consecutive_failures:
        # The hot path: every failure bumps the routing generation, so a snapshot that
        # shows a healthy key with no failure streak is at most CACHE_REFRESH_SECONDS old
        # (and current on the worker that saw the failure); such a success needs no write.
        return
    row = conn.execute(select(UpstreamKey.state, UpstreamKey.consecutive_failures)
                       .where(UpstreamKey.id == key_id)).first()
    if row is None:
        return
    health, failures = row
    if health == "healthy" and not failures:
        return
    conn.execute(update(UpstreamKey).where(UpstreamKey.id == key_id).values(
        consecutive_failures=0, consecutive_successes=UpstreamKey.consecutive_successes + 1))
    generations.bump(generations.ROUTING, conn, state)
    now = utcnow()
    if health == "unhealthy":
        _move(state, conn, key_id, "unhealthy", "healthy", reason,
              UpstreamKey.consecutive_successes >= SUCCESSES_TO_HEALTHY, cooldown_until=None)
    elif health == "cooling_down":
        _move(state, conn, key_id, "cooling_down", "healthy", "success after the cooldown ended",
              or_(UpstreamKey.cooldown_until.is_(None), UpstreamKey.cooldown_until <= now), cooldown_until=None)


def report_failure(state: WorkerState, engine: Engine, key_id: int, status: int | None, error: str,
                   retry_after: float | None = None, *, confirmed: bool = False,
                   max_cooldown: float = DEFAULT_MAX_COOLDOWN_SECONDS) -> None:
    """Record an upstream failure for ``key_id`` in its own short transaction.
    ``error`` is shown to admins: callers never put a secret or a body in it.
    ``confirmed``: the evidence is the gateway's own content-free probe, so a 401/403
    disables the key; from live traffic it only makes it unhealthy. A 429's cooldown
    is ``retry_after`` clamped to ``max_cooldown``: one answer cannot park a key for an hour."""
    if not key_id:
        return
    now = utcnow()
    error = error[:480]
    with engine.begin() as conn:
        seen = conn.execute(select(UpstreamKey.state).where(UpstreamKey.id == key_id)).scalar()
        if seen is None:
            return
        values: dict = {"failures": UpstreamKey.failures + 1, "last_error": error, "last_error_at": now,
                        "consecutive_successes": 0}
        if status == 429:
            seconds = retry_after if retry_after and retry_after > 0 else DEFAULT_COOLDOWN_SECONDS
            seconds = min(seconds, max(1.0, max_cooldown))
            values["cooldown_until"] = _not_before(now + timedelta(seconds=seconds))
        elif status not in (401, 403):
            values["consecutive_failures"] = UpstreamKey.consecutive_failures + 1
        conn.execute(update(UpstreamKey).where(UpstreamKey.id == key_id).values(**values))
        generations.bump(generations.ROUTING, conn, state)  # failures are rare; keep every snapshot exact
        if status in (401, 403):
            if confirmed:
                if seen != "disabled":
                    _move(state, conn, key_id, seen, "disabled", error)
            elif seen in ("healthy", "cooling_down"):
                _move(state, conn, key_id, seen, "unhealthy", f"{error}; the prober will re-check it",
                      cooldown_until=_not_before(now + timedelta(seconds=HALF_OPEN_INTERVAL_SECONDS)))
        elif status == 429:
            if seen == "healthy":
                _move(state, conn, key_id, seen, "cooling_down", error)
        elif seen in ("healthy", "cooling_down"):
            _move(state, conn, key_id, seen, "unhealthy", error,
                  UpstreamKey.consecutive_failures >= FAILURES_TO_UNHEALTHY,
                  cooldown_until=_not_before(now + timedelta(seconds=HALF_OPEN_INTERVAL_SECONDS)))
