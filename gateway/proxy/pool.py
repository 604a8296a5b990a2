"""Step 6: the upstream key pool - which provider key serves this request, and what
its answer says about that key's health.

Selection is smooth weighted round-robin (nginx's algorithm) over the usable keys of
every backend that serves the model, weight = backend weight x key weight, so the
split follows the weights closely even over short runs. Health lives in the
database, so every worker sees the same state:

    healthy --429--> cooling_down (until Retry-After; a later, shorter one never shortens it)
    healthy --401/403--> disabled (a dead credential; only an admin reset revives it)
    healthy --3 consecutive failures--> unhealthy --2 consecutive successes--> healthy

When no key is usable, the one whose cooldown ends first is tried anyway (half-open),
so a pool that is entirely down recovers without waiting for an admin.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from ..extensions import db
from ..models import UpstreamKey
from ..secrets_box import SecretBox
from ..timeutil import utcnow
from .routing import Route

log = logging.getLogger("gateway.pool")

FAILURES_TO_UNHEALTHY = 3
SUCCESSES_TO_HEALTHY = 2
DEFAULT_COOLDOWN_SECONDS = 30


@dataclass(frozen=True)
class Target:
    route: Route
    key_id: int
    secret: str

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"Target(backend={self.route.backend_name!r}, key_id={self.key_id})"


_lock = threading.Lock()
_current_weight: dict[int, int] = {}


def _usable(key: UpstreamKey, now: datetime) -> bool:
    if not key.enabled or key.state == "disabled":
        return False
    if key.state == "cooling_down":
        return key.cooldown_until is None or key.cooldown_until <= now
    return key.state == "healthy"


def _swrr_order(weighted: list[tuple[int, int]]) -> list[int]:
    """Pick one id by smooth weighted round-robin; return it first, then the rest by weight."""
    total = sum(w for _, w in weighted)
    with _lock:
        best = None
        for ident, weight in weighted:
            _current_weight[ident] = _current_weight.get(ident, 0) + weight
            if best is None or _current_weight[ident] > _current_weight[best]:
                best = ident
        assert best is not None
        _current_weight[best] -= total
    rest = sorted((ident for ident, _ in weighted if ident != best), key=lambda i: -dict(weighted)[i])
    return [best, *rest]


def candidates(routes: list[Route]) -> tuple[list[Target], datetime | None]:
    """Targets to try in order (first = the chosen one), and the earliest cooldown end
    when nothing is usable (for Retry-After)."""
    by_backend = {r.backend_id: r for r in routes}
    keys = list(db.session.scalars(
        select(UpstreamKey).where(UpstreamKey.backend_id.in_(list(by_backend)), UpstreamKey.enabled.is_(True))
    ))
    now = utcnow()
    usable = [k for k in keys if _usable(k, now)]
    weighted = [(k.id, by_backend[k.backend_id].weight * max(0, k.weight)) for k in usable]
    weighted = [(i, w) for i, w in weighted if w > 0]
    box: SecretBox = current_app.extensions["keygate.box"]
    by_id = {k.id: k for k in keys}
    if weighted:
        order = _swrr_order(weighted)
        return [Target(by_backend[by_id[i].backend_id], i, box.decrypt(by_id[i].secret_encrypted)) for i in order], None
    # Nothing usable: half-open probe on the key that is closest to coming back.
    revivable = [k for k in keys if k.state in ("cooling_down", "unhealthy")]
    if not revivable:
        return [], None
    revivable.sort(key=lambda k: k.cooldown_until or now)
    probe = revivable[0]
    soonest = min((k.cooldown_until for k in revivable if k.cooldown_until), default=None)
    if probe.state == "cooling_down" and probe.cooldown_until and probe.cooldown_until > now:
        return [], soonest
    return [Target(by_backend[probe.backend_id], probe.id, box.decrypt(probe.secret_encrypted))], soonest


def _transition(key_id: int, new_state: str, previous: str, reason: str) -> None:
    log.warning("upstream key %s: %s -> %s (%s)", key_id, previous, new_state, reason)


def report_success(conn, key_id: int) -> None:  # type: ignore[no-untyped-def]
    """Passive success: resets the failure streak; 2 in a row revive an unhealthy key."""
    row = conn.execute(select(UpstreamKey.state, UpstreamKey.consecutive_successes)
                       .where(UpstreamKey.id == key_id)).first()
    if row is None:
        return
    state, successes = row
    values: dict = {"consecutive_failures": 0, "consecutive_successes": UpstreamKey.consecutive_successes + 1}
    if state == "cooling_down" or (state == "unhealthy" and successes + 1 >= SUCCESSES_TO_HEALTHY):
        values.update(state="healthy", state_changed_at=utcnow(), cooldown_until=None)
        _transition(key_id, "healthy", state, "success after cooldown" if state == "cooling_down"
                    else "consecutive successes")
    conn.execute(update(UpstreamKey).where(UpstreamKey.id == key_id).values(**values))


def report_failure(engine: Engine, key_id: int, status: int | None, error: str,
                   retry_after: float | None = None) -> None:
    """Record an upstream failure for ``key_id`` in its own short transaction."""
    now = utcnow()
    error = error[:480]
    with engine.begin() as conn:
        row = conn.execute(select(UpstreamKey.state, UpstreamKey.consecutive_failures, UpstreamKey.cooldown_until)
                           .where(UpstreamKey.id == key_id)).first()
        if row is None:
            return
        state, failures, cooldown = row
        values: dict = {"failures": UpstreamKey.failures + 1, "last_error": error, "last_error_at": now,
                        "consecutive_successes": 0}
        if status in (401, 403):
            if state != "disabled":
                values.update(state="disabled", state_changed_at=now)
                _transition(key_id, "disabled", state, error)
        elif status == 429:
            until = now + timedelta(seconds=retry_after if retry_after and retry_after > 0 else DEFAULT_COOLDOWN_SECONDS)
            if cooldown is not None and cooldown > until:
                until = cooldown  # never shortened by a later, shorter Retry-After
            values.update(cooldown_until=until)
            if state in ("healthy", "cooling_down"):
                if state != "cooling_down":
                    values.update(state="cooling_down", state_changed_at=now)
                    _transition(key_id, "cooling_down", state, error)
        else:
            values["consecutive_failures"] = UpstreamKey.consecutive_failures + 1
            if state in ("healthy", "cooling_down") and failures + 1 >= FAILURES_TO_UNHEALTHY:
                values.update(state="unhealthy", state_changed_at=now)
                _transition(key_id, "unhealthy", state, error)
        conn.execute(update(UpstreamKey).where(UpstreamKey.id == key_id).values(**values))
