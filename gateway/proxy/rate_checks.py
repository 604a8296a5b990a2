"""Rate limits. All counters live in the Flask-Limiter storage (memcached in
production), so they hold across workers and hosts. Stacked on purpose - every
proxied request is counted against each of them, cheapest identity first:

    the view's first step (``check_address``; all proxy traffic, even a missing or wrong key):
        global cap (GLOBAL_RPM, one constant identity) -> client address (IP_RPM)
    inside authentication: failed key authentications per address
        (AUTH_FAILURES_PER_MINUTE, far tighter; ``authenticate.py``)
    after authentication (``check``):
        the key's owner: tier rpm -> tier rpd (optional)
    after routing (``reserve_tokens``): tier tpm (optional, see below)

The tier's limits are counted per USER, not per key: every key of a user (a second
key, a rotated key inside its grace) shares one window, so N keys never buy N times
the tier. The identity is the user, so this costs no extra round trip.

They are called explicitly instead of through ``@limiter.limit`` decorators, because
Flask-Limiter silently skips a limit whose key is empty and lets a route limit replace
the defaults (see docs/architecture.md, Failure policies); here every identity is
non-empty and nothing replaces anything.

Windows are fixed and aligned to the clock: the window of "N per minute" holding time t
is number ``floor(t / 60)``, its counter's key carries that number, and it ends at
``(number + 1) * 60`` - the ``X-RateLimit-Reset`` every worker of every instance
announces (clocks kept by NTP). The counter lives WINDOW_GRACE_SECONDS beyond its end,
so memcached's whole-second expiry clock (which can drop an item up to a second or two
early) never starts a second count inside an announced window: "5 per minute" admits at
most 5 in each announced window, across all workers and instances. Each count is one
round trip (``incr``, and ``add`` when the window is new). Windows used to start at a
key's first hit with the end remembered per worker; an early expiry then began a new
count while answers still carried the old reset, and a key got rpm+1 or rpm+2
admissions in one announced window (issue 17).

Tokens per minute: reserve the worst case, settle the actual, like the quota. At
admission ``reserve_tokens`` adds the request's worst case (prompt estimate + output
budget x choices) to the user's minute counter in one atomic ``incr`` and admits the
request only when the counter was below the limit BEFORE it: concurrent requests see
each other's in-flight reservations, so at most one request per window overshoots
(by at most its own reservation). The record step's ``settle_tokens`` replaces the
reservation with the actual count. Same two storage calls as counting afterwards.

Storage failure policy (RATELIMIT_FAIL_OPEN): open by default - the quotas in the
database still bound spending - or closed (503). Either way each failure is counted
(``StorageHealth.errors``) and an outage is logged once, with its recovery.

The known window ends and the storage's health are per-worker state (the app's
``WorkerState``); they are passed in, never looked up from a helper greenlet or after
the response, where there is no app context.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import gevent
from flask import current_app
from limits import RateLimitItem
from limits import parse as parse_limit
from limits.storage import MemcachedStorage, Storage

from ..addresses import client_ip, limit_identity
from ..errors import ApiError
from ..limiter import STORAGE_ERRORS, StorageHealth, limiter
from ..worker_state import WorkerState
from .authenticate import Caller

__all__ = ["LimitState", "TokenHold", "check", "check_address", "give_back", "reserve_tokens", "settle_tokens"]

# How long a window's counter outlives its end: memcached's clock ticks in whole seconds
# and rounds expiries, and instances' clocks differ by a little.
WINDOW_GRACE_SECONDS = 5
FAIL_CLOSED_RETRY_SECONDS = 5
# scope -> how the 429 message names it
DESCRIPTIONS = {
    "global": "the gateway-wide limit",
    "ip": "the limit for your address",
    "key": "this key's limit",
    "key-day": "this key's daily limit",
    "key-tpm": "this key's token limit",
}


@dataclass(frozen=True)
class LimitState:
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when the window ends

    @property
    def reset(self) -> int:
        return math.ceil(self.reset_at)

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(self.reset)}


class _StorageDown(Exception):
    """The storage failed and the policy is fail-open: skip the remaining limits."""


@functools.lru_cache(maxsize=1024)
def _item(text: str) -> RateLimitItem:
    """The parsed limit (a pure function of its text, so a memo)."""
    return parse_limit(text)


def _failed(health: StorageHealth, exc: BaseException) -> None:
    fail_open = current_app.config["RATELIMIT_FAIL_OPEN"]
    health.failed(exc, "open" if fail_open else "closed (503)")
    if not fail_open:
        raise ApiError(503, "Rate limiting is temporarily unavailable; retry shortly",
                       code="ratelimit_unavailable", headers={"Retry-After": str(FAIL_CLOSED_RETRY_SECONDS)})
    raise _StorageDown() from exc


def _exceeded(scope: str, item: RateLimitItem, state: LimitState, unit: str = "requests") -> ApiError:
    retry = max(1, math.ceil(state.reset_at - time.time()))
    per = f"{item.amount} {unit} per {item.GRANULARITY.name}" if item.multiples == 1 \
        else f"{item.amount} {unit} per {item.multiples} {item.GRANULARITY.name}s"
    return ApiError(429, f"Rate limit exceeded: {DESCRIPTIONS[scope]} is {per}; retry in {retry} s",
                    code="rate_limit_" + scope.replace("-", "_"),
                    headers={**state.headers(), "Retry-After": str(retry)})


def _incr(storage: Storage, key: str, expiry: int, amount: int = 1) -> int:
    """``storage.incr``, with memcached's common case - the window's counter exists -
    sent straight to the storage's own client: limits' wrapper inspects the client
    method's signature on every call (``getfullargspec``), ~30 us per limit. A missing
    counter (new window) goes through limits, which creates it with its expiry (and no
    separate expiration key: the window's end is computed, never read back)."""
    if isinstance(storage, MemcachedStorage):
        value = storage.storage.incr(key, amount, noreply=False)
        if value is not None:
            return int(value)
        return storage.incr(key, expiry, amount=amount, set_expiration_key=False)
    return storage.incr(key, expiry, amount=amount)


def _decr(storage: Storage, key: str, amount: int) -> None:
    """Take ``amount`` back from a counter (memcached floors it at 0; a counter that
    expired meanwhile is simply left alone)."""
    if isinstance(storage, MemcachedStorage):
        storage.storage.decr(key, amount, noreply=False)
    elif hasattr(storage, "decr"):
        storage.decr(key, amount)


def window_of(item: RateLimitItem, now: float) -> tuple[int, float]:
    """(number, end) of the clock-aligned window of ``item`` that holds ``now``."""
    length = item.get_expiry()
    number = int(now // length)
    return number, float((number + 1) * length)


def _window_key(base: str, number: int) -> str:
    return f"{base}/w{number}"


def _counted(state: WorkerState, scope: str, text: str, identity: str,
             amount: int = 1) -> tuple[RateLimitItem, int, float]:
    """Count one request in ``scope`` for ``identity``: (limit, count, window end).
    Storage I/O only, no request context, so it can run in a helper greenlet."""
    item = _item(text)
    storage = limiter.storage
    now = time.time()
    number, end = window_of(item, now)
    key = _window_key(item.key_for(scope, identity), number)
    expiry = math.ceil(end - now) + WINDOW_GRACE_SECONDS
    return item, state.storage.call(lambda: _incr(storage, key, expiry, amount)), end


def _counted_or_error(state: WorkerState, scope: str, text: str,
                      identity: str) -> tuple[RateLimitItem, int, float] | BaseException:
    """``_counted`` for a helper greenlet: a storage failure is returned, not raised (a
    greenlet that dies with an exception gets its traceback printed by gevent, once per
    request during an outage, where the outage is meant to be logged once)."""
    try:
        return _counted(state, scope, text, identity)
    except STORAGE_ERRORS as exc:
        return exc


def _judge(scope: str, counted: tuple[RateLimitItem, int, float]) -> LimitState:
    item, count, reset = counted
    state = LimitState(item.amount, max(0, item.amount - count), reset)
    if count > item.amount:
        raise _exceeded(scope, item, state)
    return state


def _hit(state: WorkerState, scope: str, text: str, identity: str) -> LimitState:
    """Count one request in ``scope`` for ``identity``; 429 once over the limit."""
    try:
        counted = _counted(state, scope, text, identity)
    except STORAGE_ERRORS as exc:
        _failed(state.storage, exc)
    state.storage.ok()
    return _judge(scope, counted)


def check_address(state: WorkerState) -> None:
    """Global cap and per-address limit: the first step of every proxy view, before
    anything else runs (so key guessing and malformed requests are counted too)."""
    config = current_app.config
    # The two counters are independent: both requests go out at once, so the request
    # waits for one storage round trip instead of two (each wait is a trip through the
    # worker's event loop; under load the second one cost several ms of time to first byte).
    address = gevent.spawn(_counted_or_error, state, "ip", f"{config['IP_RPM']}/minute", limit_identity(client_ip()))
    try:
        try:
            everyone = _counted(state, "global", f"{config['GLOBAL_RPM']}/minute", "all")
        except STORAGE_ERRORS as exc:
            address.join()
            _failed(state.storage, exc)
        by_address = address.get()
        if isinstance(by_address, BaseException):
            _failed(state.storage, by_address)
        state.storage.ok()
        _judge("global", everyone)
        _judge("ip", by_address)
    except _StorageDown:
        pass


def _user(caller: Caller) -> str:
    """The identity of the tier's limits: the key's owner (all its keys share them)."""
    return f"user-{caller.user_id}"


def check(state: WorkerState, caller: Caller) -> dict[str, str]:
    """Count this request against its owner's tier limits; raise 429 on the first
    exceeded. Returns the per-minute limit headers for the response (empty while the
    storage is down and the policy is fail-open)."""
    try:
        minute = _hit(state, "key", f"{caller.rpm}/minute", _user(caller))
        if caller.rpd:
            _hit(state, "key-day", f"{caller.rpd}/day", _user(caller))
    except _StorageDown:
        return {}
    return minute.headers()


@dataclass(frozen=True)
class TokenHold:
    """Tokens reserved in a user's tpm window (plain values, for the record step)."""

    key: str  # the limit's key without its window number
    tpm: int
    amount: int
    window: int  # the number of the window that holds ``amount``
    window_end: float  # epoch seconds: after it, that window no longer counts


def reserve_tokens(state: WorkerState, caller: Caller, amount: int) -> TokenHold | None:
    """Reserve ``amount`` (the request's worst case) in the user's tokens-per-minute
    window; 429 when the window was already full before this request. None when the
    tier has no tpm or the storage is down under the fail-open policy."""
    if not caller.tpm:
        return None
    amount = max(1, amount)
    try:
        try:
            item, count, reset = _counted(state, "key-tpm", f"{caller.tpm}/minute", _user(caller), amount)
        except STORAGE_ERRORS as exc:
            _failed(state.storage, exc)
    except _StorageDown:
        return None
    state.storage.ok()
    hold = TokenHold(item.key_for("key-tpm", _user(caller)), caller.tpm, amount,
                     window_of(item, reset - 1)[0], reset)  # the window ending at ``reset``
    if count - amount >= item.amount:
        give_back(state.storage, hold)
        raise _exceeded("key-tpm", item, LimitState(item.amount, 0, reset), unit="tokens")
    return hold


def give_back(health: StorageHealth, hold: TokenHold | None) -> None:
    """Release a reservation of a request that was refused after it (402, 429)."""
    settle_tokens(health, hold, 0)


def settle_tokens(health: StorageHealth, hold: TokenHold | None, tokens: int) -> None:
    """Replace the reservation with the actual ``tokens`` (from the record step, outside
    any request context; a storage failure only loses this correction). When the
    reserving window has ended, the actual count goes into the current window, as it
    would have without a reservation."""
    if hold is None:
        return
    storage = limiter.storage
    item = _item(f"{hold.tpm}/minute")
    tokens = max(0, tokens)
    now = time.time()
    try:
        if now >= hold.window_end:
            if tokens:
                number, end = window_of(item, now)
                expiry = math.ceil(end - now) + WINDOW_GRACE_SECONDS
                key = _window_key(hold.key, number)
                health.call(lambda: _incr(storage, key, expiry, tokens))
        else:
            key = _window_key(hold.key, hold.window)
            expiry = math.ceil(hold.window_end - now) + WINDOW_GRACE_SECONDS
            if tokens > hold.amount:
                health.call(lambda: _incr(storage, key, expiry, tokens - hold.amount))
            elif tokens < hold.amount:
                health.call(lambda: _decr(storage, key, hold.amount - tokens))
    except STORAGE_ERRORS as exc:
        health.failed(exc, "open (token counts)")
        return
    health.ok()
