"""Portal sign-in limits: password guessing stays slow, and nobody can lock an admin out.

Issue 15, finding 9: counting failures per username alone let anyone lock an account
from every address (ten wrong passwords a minute kept the real admin out, the right
password included). The rule now, for an attempt to sign in as ``username`` from the
trusted client address ``address`` (``addresses.client_ip``, an IPv6 address as its /64):

1. **address** - ``2 x ADMIN_AUTH_FAILURES_PER_MINUTE`` failures per minute from one
   address, whatever the usernames (several admins may share one NAT): further
   attempts from that address get 429, even with the right password.
2. **pair** - ``ADMIN_AUTH_FAILURES_PER_MINUTE`` failures per minute for one
   (username, address): 429 for that pair only; the same username from another
   address is unaffected.
3. **username backoff** - once a username collected
   ``SIGN_IN_USERNAME_FAILURES_PER_HOUR`` failures within an hour (from all addresses
   together), every further failure starts a backoff of 30 s, doubling with each one
   (30, 60, 120 ...), at most ``SIGN_IN_BACKOFF_MAX_SECONDS``. While it runs, an address
   that failed for this username within the hour gets 429; an address with NO failure
   for this username within the hour is let through to the password check. So an
   attacker spraying from many addresses cannot keep the real admin out: the admin's
   own address, which did not fail, still signs in with the right password. What the
   attacker gains is one guess per fresh address per hour (each failure makes that
   address "failed" and lengthens the backoff), on top of rules 1 and 2.

A successful sign-in clears the pair's counters (that address is the account's own).
Each lockout - an address or pair reaching its limit, a backoff starting or growing -
is logged once as a security event: an ``audit_log`` row (actor ``security``, action
``admin.sign_in_locked``, detail ``scope``/``username``/``retry_after``/``failures``)
and a warning on the ``gateway.security`` logger with the same fields. Refused attempts
are not logged one by one (an attacker could fill the audit log with them).

Usernames are hashed into the storage keys: memcached keys cannot hold spaces or
control characters, and a key pymemcache refuses would count as a storage error and
open the throttle. Counters live in the rate-limit storage (memcached in production),
fixed windows like every other limit; like the other failure throttles they fail open
when the storage is down (see docs/architecture.md, Failure policies).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from flask import current_app
from limits import RateLimitItem
from limits import parse as parse_limit

from ..addresses import limit_identity
from ..limiter import STORAGE_ERRORS, limiter
from ..services import audit
from ..transaction import committed
from ..worker_state import worker_state

log = logging.getLogger("gateway.security")
T = TypeVar("T")

BACKOFF_FIRST_SECONDS = 30
BACKOFF_SCOPE = "portal-sign-in-backoff"
LOCKED_ACTION = "admin.sign_in_locked"


@dataclass(frozen=True)
class Refusal:
    """Why an attempt is refused before its password is checked, and for how long."""

    scope: str  # "address", "pair" or "username"
    retry_after: int


def _hashed(username: str) -> str:
    return hashlib.sha256(username.encode("utf-8", "replace")).hexdigest()[:32]


def _limits() -> dict[str, RateLimitItem]:
    config = current_app.config
    per_minute = config["ADMIN_AUTH_FAILURES_PER_MINUTE"]
    per_hour = config["SIGN_IN_USERNAME_FAILURES_PER_HOUR"]
    return {
        "address": parse_limit(f"{per_minute * 2}/minute"),
        "pair": parse_limit(f"{per_minute}/minute"),
        "pair-hour": parse_limit(f"{per_hour}/hour"),  # "has this address failed for this username lately?"
        "username": parse_limit(f"{per_hour}/hour"),
    }


def _identities(username: str, address: str) -> dict[str, str]:
    user = _hashed(username)
    where = limit_identity(address)
    return {"address": where, "pair": f"{user}-{where}", "pair-hour": f"{user}-{where}", "username": user}


def _key(scope: str, item: RateLimitItem, identity: str) -> str:
    return item.key_for(f"portal-sign-in-{scope}", identity)


def _storage_call(operation: Callable[[], T], fallback: T) -> T:
    """One storage operation; a storage failure answers ``fallback`` (fail open)."""
    health = worker_state().storage
    try:
        result = health.call(operation)
    except STORAGE_ERRORS as exc:
        health.failed(exc, "open (failure throttles)")
        return fallback
    health.ok()
    return result


def _count_and_reset(key: str) -> tuple[int, float]:
    storage = limiter.storage
    return _storage_call(lambda: (int(storage.get(key) or 0), float(storage.get_expiry(key))), (0, 0.0))


def _wait(reset: float) -> int:
    return max(1, int(reset - time.time()) + 1)


def refusal(username: str, address: str) -> Refusal | None:
    """The reason to refuse this attempt before checking its password, or None."""
    items, ids = _limits(), _identities(username, address)
    for scope in ("address", "pair"):
        count, reset = _count_and_reset(_key(scope, items[scope], ids[scope]))
        if count >= items[scope].amount:
            return Refusal(scope, _wait(reset))
    locked, until = _count_and_reset(_backoff_key(ids["username"]))
    if locked:
        failed_here, _ = _count_and_reset(_key("pair-hour", items["pair-hour"], ids["pair-hour"]))
        if failed_here:
            return Refusal("username", _wait(until))
    return None


def _backoff_key(user: str) -> str:
    return f"LIMITER/{BACKOFF_SCOPE}/{user}"


def _incr(key: str, expiry: int) -> int:
    return int(limiter.storage.incr(key, expiry))


def backoff_seconds(failures: int, threshold: int, most: int) -> int:
    """The backoff after the ``failures``-th failure in the hour (0 below ``threshold``):
    30 s at the threshold, doubling with each failure after it, at most ``most``."""
    if failures < threshold:
        return 0
    return min(most, BACKOFF_FIRST_SECONDS * 2 ** min(failures - threshold, 20))


def failed(username: str, address: str) -> None:
    """Count a wrong password (or unknown username) and log any lockout it starts."""
    items, ids = _limits(), _identities(username, address)
    storage = limiter.storage
    counts: dict[str, int] = {}
    for scope, item in items.items():
        key = _key(scope, item, ids[scope])
        counts[scope] = _storage_call(functools.partial(_incr, key, item.get_expiry()), 0)
    for scope in ("address", "pair"):
        if counts[scope] == items[scope].amount:  # this failure reached the limit: the lockout starts now
            _, reset = _count_and_reset(_key(scope, items[scope], ids[scope]))
            _security_event(scope, username, address, _wait(reset), counts[scope])
    config = current_app.config
    delay = backoff_seconds(counts["username"], items["username"].amount, config["SIGN_IN_BACKOFF_MAX_SECONDS"])
    if delay:
        key = _backoff_key(ids["username"])

        def start_backoff() -> None:
            storage.clear(key)
            storage.incr(key, delay)

        _storage_call(start_backoff, None)
        _security_event("username", username, address, delay, counts["username"])


def succeeded(username: str, address: str) -> None:
    """The right password from ``address``: that address is the account's own, so its
    failures for this username are forgotten (the username's hourly count is not)."""
    items, ids = _limits(), _identities(username, address)
    storage = limiter.storage
    for scope in ("pair", "pair-hour"):
        key = _key(scope, items[scope], ids[scope])
        _storage_call(functools.partial(storage.clear, key), None)


def _security_event(scope: str, username: str, address: str, retry_after: int, failures: int) -> None:
    detail = {"scope": scope, "username": username, "retry_after": retry_after, "failures": failures}
    log.warning("portal sign-in locked", extra={"fields": {"event": "sign_in_locked", "client_ip": address, **detail}})
    with committed():
        audit.log_action("security", LOCKED_ACTION, "admin", None, detail, address)
