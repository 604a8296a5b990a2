"""Quota - reserve (the request-flow step after routing), then settle (in accounting).

Before forwarding, the request's worst case (prompt estimate + max_tokens, one
request, the body's bytes) is added to the period row's ``reserved_*`` columns by ONE
conditional UPDATE whose WHERE clause is the quota check; its row count decides
admission. Concurrent requests therefore cannot jointly overspend: the database
serialises the updates and each sees the others' reservations. After the response,
``settle`` (run inside the record step's transaction) releases the reservation and
adds the actual numbers. The request quota is exact. The output is bounded too: the reservation
covers the output cap times the choices (``n``, ``best_of``), and when the client gave
no cap the reserved budget is sent to the upstream as its cap (``routes._prepare_body``),
so the only token overspend is a prompt larger than its estimate.

Without ``max_tokens`` the output budget is DEFAULT_MAX_TOKENS_RESERVE per choice,
lowered to what is left of the quota: a small remaining quota still admits a request,
with a correspondingly small cap.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..db_failures import ANY_ERROR
from ..errors import ApiError
from ..extensions import db
from ..models import Reservation, UsageCounter
from ..periods import period_bounds
from ..timeutil import isoformat, utcnow
from ..worker_state import worker_state
from . import core_statements, pg_statements
from .authenticate import Caller

log = logging.getLogger("gateway.quota")
SWEEP_BATCH = 1000  # rows per transaction, so one sweep never holds a long write lock


@dataclass(frozen=True)
class Held:
    """A granted reservation (plain values for the streaming generator)."""

    request_id: str
    counter_id: int
    tokens: int
    requests: int
    bytes: int
    # Output tokens per choice this reservation covers; the gateway sends it upstream as
    # the output cap when the client gave none, so the reservation is a true upper bound.
    output_per_choice: int = 0


def _counter_id(conn: Connection, user_id: int, start: datetime) -> int:
    """The period row's id, created on first use (a unique constraint settles races)."""
    query = select(UsageCounter.id).where(UsageCounter.user_id == user_id, UsageCounter.period_start == start)
    found = conn.execute(query).scalar()
    if found is not None:
        return int(found)
    try:
        with conn.begin_nested():
            conn.execute(insert(UsageCounter).values(
                user_id=user_id, period_start=start, tokens_in=0, tokens_out=0, requests=0, bytes=0,
                reserved_tokens=0, reserved_requests=0, reserved_bytes=0))
    except IntegrityError:
        pass  # another request created it first
    return int(conn.execute(query).scalar_one())


def unique_variant(request_id: str) -> str:
    """``request_id`` made unique, still starting with it (at most 64 characters)."""
    return f"{request_id[:48]}-{uuid.uuid4().hex[:15]}"


def _quota_error(caller: Caller, counter: Any, period_end: datetime | None, what: str) -> ApiError:
    used_tokens = (counter.tokens_in + counter.tokens_out) if counter else 0
    used_requests = counter.requests if counter else 0
    resets = f"; the quota resets at {isoformat(period_end)}" if period_end else "; it does not reset"
    token_quota = caller.token_quota if caller.token_quota is not None else "unlimited"
    request_quota = caller.request_quota if caller.request_quota is not None else "unlimited"
    return ApiError(
        402, f"Quota exhausted ({what}): {used_tokens} of {token_quota} tokens and {used_requests} of "
             f"{request_quota} requests used this period{resets}",
        code="quota_exceeded",
        extra={"quota": {"token_quota": caller.token_quota, "request_quota": caller.request_quota,
                         "byte_quota": caller.byte_quota, "tokens_used": used_tokens,
                         "requests_used": used_requests, "bytes_used": counter.bytes if counter else 0,
                         "in_flight_tokens": counter.reserved_tokens if counter else 0,
                         "resets_at": isoformat(period_end)}},
    )


COUNTER_CACHE_LIMIT = 50_000


def _cached_counter_id(engine: Engine, counter_ids: dict[tuple[int, datetime], int], user_id: int,
                       start: datetime) -> int:
    """The period row's id, remembered in the worker's state (a period row is never
    deleted in production; a stale id only costs the retry in ``reserve``)."""
    cache_key = (user_id, start)
    found = counter_ids.get(cache_key)
    if found is None:
        with engine.begin() as conn:
            found = _counter_id(conn, user_id, start)
        if len(counter_ids) >= COUNTER_CACHE_LIMIT:
            counter_ids.clear()
        counter_ids[cache_key] = found
    return found


def _admit(engine: Engine, caller: Caller, counter_id: int, request_id: str, tokens: int, body_bytes: int,
           now: datetime) -> bool:
    """Add the reservation if it fits: the conditional UPDATE decides, the reservation
    row is written in the same atomic unit."""
    if pg_statements.is_postgres(engine):
        return pg_statements.run(engine, pg_statements.RESERVE, {
            "tokens": tokens, "nbytes": body_bytes, "counter_id": counter_id,
            "token_quota": caller.token_quota, "request_quota": caller.request_quota,
            "byte_quota": caller.byte_quota, "request_id": request_id, "now": now}) is not None
    with engine.begin() as conn:
        admitted = conn.execute(core_statements.ADMIT, {
            "counter_id": counter_id, "add_tokens": tokens, "add_bytes": body_bytes,
            "token_quota": caller.token_quota, "request_quota": caller.request_quota,
            "byte_quota": caller.byte_quota}).rowcount == 1
        if not admitted:
            return False
        conn.execute(core_statements.HOLD, {"request_id": request_id, "counter_id": counter_id, "tokens": tokens,
                                            "requests": 1, "bytes": body_bytes, "created_at": now})
    return True


def reserve(caller: Caller, request_id: str, prompt_tokens: int, max_tokens: int | None, body_bytes: int,
            now: datetime | None = None, choices: int = 1) -> Held:
    """Reserve the worst case or raise 402: one conditional UPDATE decides admission
    (one statement on PostgreSQL, one transaction on SQLite). The worst case is the
    prompt estimate + the output cap x ``choices`` (``n``/``best_of``); without a cap
    from the client it is DEFAULT_MAX_TOKENS_RESERVE per choice, lowered to what is left
    of the quota, and ``Held.output_per_choice`` is what the caller must send upstream
    as the cap. Stale reservations are not this request's business: the background
    sweep (``proxy.sweep``) releases them."""
    now = now or utcnow()
    counter_ids = worker_state().counter_ids
    start, end = period_bounds(caller.quota_period, caller.reset_day, now, current_app.config["QUOTA_TIMEZONE"])
    cap = current_app.config["DEFAULT_MAX_TOKENS_RESERVE"]
    engine = db.engine
    for attempt in range(2):
        counter_id = _cached_counter_id(engine, counter_ids, caller.user_id, start)
        per_choice = max_tokens if max_tokens is not None else cap
        if max_tokens is None and caller.token_quota is not None:
            with engine.connect() as conn:
                row = conn.execute(select(UsageCounter).where(UsageCounter.id == counter_id)).first()
            if row is not None:
                left = caller.token_quota - (row.tokens_in + row.tokens_out + row.reserved_tokens)
                per_choice = max(1, min(per_choice, (left - prompt_tokens) // choices))
        tokens = prompt_tokens + per_choice * choices
        try:
            admitted = _admit(engine, caller, counter_id, request_id, tokens, body_bytes, now)
        except IntegrityError:
            # The reservation's request id is unique and a client-chosen X-Request-ID can
            # equal one in flight (issue 15, finding 11): the atomic unit rolled back whole,
            # so hold under a variant that stays recognisable; the client's id is still the
            # one echoed in the response header, and accounting makes the log row unique too.
            request_id = unique_variant(request_id)
            admitted = _admit(engine, caller, counter_id, request_id, tokens, body_bytes, now)
        if admitted:
            return Held(request_id, counter_id, tokens, 1, body_bytes, per_choice)
        # Refused: decide with a fresh look-up of the period row, never with a remembered
        # id alone (a refusal is rare; a wrong 402 is worse than one more query).
        counter_ids.pop((caller.user_id, start), None)
        if attempt == 0:
            continue
        with engine.connect() as conn:
            counter = conn.execute(select(UsageCounter).where(UsageCounter.id == counter_id)).first()
        raise _quota_error(caller, counter, end, _which(caller, counter, tokens, body_bytes))
    raise ApiError(503, "Quota state is unavailable; retry shortly", code="quota_unavailable",
                   headers={"Retry-After": "1"})


def _which(caller: Caller, counter: Any, tokens: int, body_bytes: int) -> str:
    if counter is None:
        return "tokens"
    if caller.request_quota is not None and counter.requests + counter.reserved_requests + 1 > caller.request_quota:
        return "requests"
    if caller.byte_quota is not None and counter.bytes + counter.reserved_bytes + body_bytes > caller.byte_quota:
        return "bytes"
    return "tokens"


def settle(conn: Connection, held: Held, tokens_in: int, tokens_out: int, nbytes: int,
           count_request: bool = True) -> None:
    """Release ``held`` and add the actual usage, exactly once: the reservation row is
    deleted first, and only the caller that deleted it releases the reserved amounts
    (a sweep that got there first already released them)."""
    released = conn.execute(core_statements.RELEASE, {"held_request_id": held.request_id}).first()
    conn.execute(core_statements.ADD_USAGE, {
        "counter_id": held.counter_id, "add_tokens_in": max(0, tokens_in), "add_tokens_out": max(0, tokens_out),
        "add_requests": 1 if count_request else 0, "add_bytes": max(0, nbytes),
        "release_tokens": released.tokens if released else 0,
        "release_requests": released.requests if released else 0,
        "release_bytes": released.bytes if released else 0})


BYTE_STEP = 256 * 1024  # a byte budget grows by at least this much: one statement per step, not per chunk


class ByteBudget:
    """The bytes one request may move under its user's byte quota, counted as they flow
    (upload chunks of the pass-through, response chunks of every relay).

    "Reserve the worst case, settle the actual", like tokens - but a response's size is
    unknown at admission, and reserving all that is left would make a user's requests
    queue behind each other. So the reservation grows as bytes arrive: when the counted
    bytes pass what is held, one conditional UPDATE adds at least BYTE_STEP more to the
    period row (the quota check, exactly as at admission) and to the reservation row (so
    settle and the sweep release what was really held). A step that does not fit is
    retried with exactly what is needed; when even that does not fit the caller stops
    with an in-band error. Concurrent requests therefore share the quota, never exceed it.
    Only users with a byte quota have one: ordinary requests pay nothing."""

    def __init__(self, engine: Engine, held: Held, byte_quota: int, counted: int = 0) -> None:
        self.engine = engine
        self.held = held
        self.quota = byte_quota
        self.reserved = held.bytes  # what the period row holds for this request
        self.counted = counted  # bytes in + out so far

    def take(self, n: int) -> bool:
        """Count ``n`` more bytes; False (nothing counted) when they do not fit."""
        if self.counted + n > self.reserved and not self.ensure(self.counted + n - self.reserved):
            return False
        self.counted += n
        return True

    def ensure(self, more: int) -> bool:
        """Hold at least ``more`` bytes beyond what is already counted; False when the
        quota cannot hold them (e.g. a declared Content-Length, refused up front)."""
        need = self.counted + more - self.reserved
        if need <= 0:
            return True
        for amount in (max(need, BYTE_STEP), need):
            if self._grow(amount):
                return True
            if amount == need:
                break
        return False

    def _grow(self, amount: int) -> bool:
        c, r = UsageCounter, Reservation
        try:
            with self.engine.begin() as conn:
                grown = conn.execute(update(c).where(
                    c.id == self.held.counter_id, c.bytes + c.reserved_bytes + amount <= self.quota).values(
                    reserved_bytes=c.reserved_bytes + amount)).rowcount == 1
                if not grown:
                    return False
                if conn.execute(update(r).where(r.request_id == self.held.request_id).values(
                        bytes=r.bytes + amount)).rowcount != 1:
                    raise _Gone()  # the reservation was swept: roll the growth back
        except _Gone:
            return False
        self.reserved += amount
        return True


class _Gone(Exception):
    """A byte budget's reservation row no longer exists."""


def byte_budget(engine: Engine, caller: Caller, held: Held, counted: int = 0) -> ByteBudget | None:
    """The request's byte budget, or None when its user has no byte quota."""
    if caller.byte_quota is None:
        return None
    return ByteBudget(engine, held, caller.byte_quota, counted)


def byte_quota_error(caller: Caller, what: str) -> ApiError:
    """402 for bytes that do not fit in what is left of the byte quota."""
    return ApiError(402, f"Quota exhausted (bytes): {what} does not fit in what is left of the "
                         f"{caller.byte_quota}-byte quota this period", code="quota_exceeded",
                    extra={"quota": {"token_quota": caller.token_quota, "request_quota": caller.request_quota,
                                     "byte_quota": caller.byte_quota}})


class Renewal:
    """Keeps a live request's reservation from the sweep: the sweep releases rows whose
    ``created_at`` is older than RESERVATION_TTL_SECONDS, so a request that is still
    relaying moves it forward, at most once per ``every`` seconds (a clock read per chunk
    otherwise; a request shorter than ``every`` never writes). A failed renewal is only
    logged: the stream goes on, and settle still records it exactly once."""

    def __init__(self, engine: Engine, request_id: str, every: float) -> None:
        self.engine = engine
        self.request_id = request_id
        self.every = every
        self.due = time.monotonic() + every

    def tick(self) -> None:
        now = time.monotonic()
        if now < self.due:
            return
        self.due = now + self.every
        try:
            with self.engine.begin() as conn:
                conn.execute(update(Reservation).where(Reservation.request_id == self.request_id)
                             .values(created_at=utcnow()))
        except ANY_ERROR as exc:
            log.warning("renewing the reservation of %s failed: %s", self.request_id, type(exc).__name__)


def renewal(engine: Engine, held: Held) -> Renewal:
    """The request's renewal, every RESERVATION_RENEW_SECONDS (0: a third of the TTL)."""
    config = current_app.config
    every = config["RESERVATION_RENEW_SECONDS"] or config["RESERVATION_TTL_SECONDS"] / 3
    return Renewal(engine, held.request_id, every)


def release_stale(older_than_seconds: int, now: datetime | None = None) -> int:
    """Release reservations older than ``older_than_seconds`` - requests that died with
    their worker - and return how many. Each row is deleted before its amounts are
    released, and ``settle`` does the same, so a reservation is released exactly once
    even when its request finishes while the sweep runs. A live request renews its row
    (``Renewal``), so only requests that stopped relaying for a whole TTL are released."""
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_seconds)
    released = 0
    c = UsageCounter
    with db.engine.begin() as conn:
        stale = conn.execute(select(Reservation).where(Reservation.created_at < cutoff)
                             .order_by(Reservation.id).limit(SWEEP_BATCH)).all()
        for row in stale:
            if conn.execute(delete(Reservation).where(Reservation.id == row.id)).rowcount != 1:
                continue  # settled meanwhile
            conn.execute(update(c).where(c.id == row.counter_id).values(
                reserved_tokens=c.reserved_tokens - row.tokens, reserved_requests=c.reserved_requests - row.requests,
                reserved_bytes=c.reserved_bytes - row.bytes))
            released += 1
    return released
