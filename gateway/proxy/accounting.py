"""Accounting, the request flow's last step: account for a finished request - exactly once.

One transaction settles the quota reservation with the actual numbers, bumps the
key's and the upstream key's counters and writes one request-log row (metadata only:
never prompt or completion text, never a key). It runs from the relay generator's
``finally``, so success, upstream failure and client disconnect are all recorded.
If the database is briefly unavailable the write is retried with backoff, because
losing recorded usage is worse than holding a finished greenlet a little longer.
There is no app context here (the relay generator outlives the request), so the
worker's state is passed in.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ..db_failures import UNAVAILABLE
from ..models import RequestLog, Reservation
from ..observability.events import outcome_recorded
from ..timeutil import utcnow
from ..worker_state import WorkerState
from . import core_statements, pg_statements, pool, quota, rate_checks

log = logging.getLogger("gateway.accounting")
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_TOKENS_RECORDED = 10_000_000


@dataclass
class RequestOutcome:
    """What happened to one request, filled in as it goes; plain values only."""

    request_id: str
    route: str
    client_ip: str | None
    user_id: int | None = None
    key_id: int | None = None
    backend_id: int | None = None
    upstream_key_id: int | None = None
    model: str | None = None
    status: int = 0
    streamed: bool = False
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    estimated: bool = False
    bytes_in: int = 0
    bytes_out: int = 0
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    outcome: str = "ok"
    error_type: str | None = None
    prices: dict = field(default_factory=dict)
    count_request: bool = True
    upstream_ok: bool = False
    tpm: int | None = None  # the tier's tokens-per-minute limit
    tpm_hold: rate_checks.TokenHold | None = None  # tokens reserved in the tpm window, settled with the actual
    family: str = ""  # api_family.route_family of the request, for metrics and the log line

    def cost(self) -> float | None:
        price = self.prices.get(self.model or "") if self.prices else None
        if not price:
            return None
        return round((self.tokens_in * price.get("input", 0.0) + self.tokens_out * price.get("output", 0.0)) / 1e6, 8)


def _clamp(value: int) -> int:
    return max(0, min(int(value), MAX_TOKENS_RECORDED))


def _needs_health_update(state: WorkerState, out: RequestOutcome) -> bool:
    """A success on a key the snapshot knows as healthy with no failure streak changes
    nothing; anything else goes through the pool's state machine."""
    if out.upstream_key_id is None or not out.upstream_ok:
        return False
    known = state.snapshot.key_info(out.upstream_key_id)
    return known is None or known.state != "healthy" or bool(known.consecutive_failures)


def _log_row(out: RequestOutcome, request_id: str, now: datetime) -> dict[str, Any]:
    """The request-log row's values (metadata only), shared by both write paths."""
    return {
        "request_id": request_id, "created_at": now, "user_id": out.user_id, "key_id": out.key_id,
        "backend_id": out.backend_id, "upstream_key_id": out.upstream_key_id, "route": out.route[:200],
        "model": (out.model or None) and out.model[:200], "status": out.status, "streamed": out.streamed,
        "tokens_in": _clamp(out.tokens_in), "tokens_out": _clamp(out.tokens_out),
        "cache_read_tokens": _clamp(out.cache_read_tokens), "cache_creation_tokens": _clamp(out.cache_creation_tokens),
        "estimated": out.estimated, "bytes_in": out.bytes_in, "bytes_out": out.bytes_out,
        "latency_ms": out.latency_ms, "ttfb_ms": out.ttfb_ms, "outcome": out.outcome, "error_type": out.error_type,
        "client_ip": out.client_ip, "cost": out.cost()}


def _write_one_statement(engine: Engine, out: RequestOutcome, held: quota.Held, request_id: str) -> None:
    """PostgreSQL: the whole record step as one atomic statement (see pg_statements)."""
    now = utcnow()
    pg_statements.run(engine, pg_statements.RECORD, {
        **_log_row(out, request_id, now), "now": now, "held_request_id": held.request_id,
        "counter_id": held.counter_id, "count_request": 1 if out.count_request else 0,
        "nbytes": max(0, out.bytes_in + out.bytes_out)})


def _write(state: WorkerState, engine: Engine, out: RequestOutcome, held: quota.Held | None,
           request_id: str) -> None:
    if (held is not None and out.key_id is not None and out.upstream_key_id is not None
            and pg_statements.is_postgres(engine) and not _needs_health_update(state, out)):
        _write_one_statement(engine, out, held, request_id)
        return
    now = utcnow()
    tokens_in, tokens_out = _clamp(out.tokens_in), _clamp(out.tokens_out)
    added = {"add_tokens_in": tokens_in, "add_tokens_out": tokens_out, "used_at": now}
    # Row-lock order as in pg_statements.RECORD: reservation, usage row, key, upstream key, log.
    with engine.begin() as conn:
        if held is not None:
            quota.settle(conn, held, tokens_in, tokens_out, out.bytes_in + out.bytes_out, out.count_request)
        if out.key_id is not None:
            conn.execute(core_statements.KEY_USAGE, {"key_id": out.key_id, **added})
        if out.upstream_key_id is not None:
            conn.execute(core_statements.UPSTREAM_KEY_USAGE, {"upstream_key_id": out.upstream_key_id, **added})
            if out.upstream_ok:
                pool.report_success(state, conn, out.upstream_key_id, from_live_traffic=True)
        conn.execute(core_statements.LOG_ROW, _log_row(out, request_id, now))


def _already_written(engine: Engine, held: quota.Held, request_id: str) -> bool:
    """After a failure whose outcome is unknown (the connection died around the commit):
    the write deletes the reservation and inserts the log row in one transaction, so both
    together say it committed, and writing again would count the usage twice."""
    with engine.connect() as conn:
        reserved = conn.execute(select(Reservation.id).where(Reservation.request_id == held.request_id)).first()
        logged = conn.execute(select(RequestLog.id).where(RequestLog.request_id == request_id)).first()
    return reserved is None and logged is not None


def record_usage(state: WorkerState, engine: Engine, out: RequestOutcome, held: quota.Held | None) -> None:
    """Write ``out`` exactly once; retried while the database is unavailable."""
    request_id = out.request_id
    uncertain = False
    for attempt, delay in enumerate((0.0, *RETRY_DELAYS)):
        if delay:
            time.sleep(delay)
        try:
            if uncertain and held is not None and _already_written(engine, held, request_id):
                log.warning("usage for %s was written before the connection failed; not writing it again",
                            out.request_id)
                outcome_recorded(out)
                return
            if attempt == 0:
                # Before the database write: the next request may arrive as soon as the log
                # row is visible, and must see this request's actual tokens, not its reservation.
                rate_checks.settle_tokens(state.storage, out.tpm_hold,
                                          _clamp(out.tokens_in) + _clamp(out.tokens_out))
            _write(state, engine, out, held, request_id)
            outcome_recorded(out)
            return
        except IntegrityError:
            # A client-supplied X-Request-ID seen before: keep it recognisable, make it unique.
            request_id = quota.unique_variant(out.request_id)
        except UNAVAILABLE as exc:
            uncertain = True
            log.error("recording usage for %s failed (attempt %d): %s", out.request_id, attempt + 1,
                      type(exc).__name__)
    log.critical("usage for request %s could not be recorded; reservation left for the sweep", out.request_id)
    outcome_recorded(out)
