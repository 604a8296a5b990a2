"""Authentication, the request-flow step after the address limit and the snapshot
refresh (see ``gateway.proxy.routes``): who is calling, and may they call at all?

Unknown, malformed, revoked, expired and rotated-past-grace keys, and keys of
deleted users, all get the same 401 body, so an attacker learns nothing from the
answer; the lookup is a single indexed equality on an HMAC digest, so its time does
not depend on how much of a guessed key is right. Suspended users get 403 (see
docs/architecture.md, Error contract) because their key is real and the owner needs to know why it stopped working.
Failed attempts are counted per client address; guessing gets 429 quickly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from flask import current_app, request

from .. import key_rules
from ..addresses import address_allowed, client_ip, limit_identity
from ..errors import ApiError
from ..extensions import db
from ..limiter import throttle_for
from ..models import ApiKey
from ..secrets_box import hash_user_key
from ..timeutil import utcnow
from ..worker_state import WorkerState
from .snapshot import CachedKey

INVALID_KEY_MESSAGE = "Invalid API key. Check the key you were given (it starts with sk-)."


@dataclass(frozen=True)
class Caller:
    """Plain values about the authenticated caller: safe to hand to a streaming
    generator after the request context is gone."""

    key_id: int
    key_prefix: str
    user_id: int
    user_name: str
    tier: str
    rpm: int
    rpd: int | None
    tpm: int | None
    token_quota: int | None
    request_quota: int | None
    byte_quota: int | None
    quota_period: str
    reset_day: int
    allowed_models: tuple[str, ...] = field(default_factory=tuple)
    allowed_backends: tuple[str, ...] = field(default_factory=tuple)
    key_allowed_models: tuple[str, ...] = field(default_factory=tuple)
    key_allowed_backends: tuple[str, ...] = field(default_factory=tuple)


def presented_key(query_key: bool = False) -> str | None:
    """The key the request carries (``key_rules``); from the ``key`` query parameter too
    only when ``query_key`` (the Gemini routes, whose clients may put it there)."""
    return key_rules.key_from_request(request.headers, request.args if query_key else None)


def _ip_allowed(ip: str, allowlist: tuple[str, ...]) -> bool:
    """An empty allow-list allows every address."""
    return not allowlist or address_allowed(ip, allowlist)


def key_is_usable(key: ApiKey | CachedKey, now: datetime) -> bool:
    """Not revoked (nor past a rotation grace), not expired."""
    return key_rules.is_usable(key, now)


def authenticate(state: WorkerState, query_key: bool = False) -> Caller:
    """Resolve the presented key to a Caller or raise ApiError (401/403/429), from the
    worker's snapshot - which the view refreshed just before, so a revoked key or a
    suspended owner fails on every worker within CACHE_REFRESH_SECONDS (and on the next
    request of the worker that revoked it)."""
    engine = db.engine
    ip = client_ip()
    counted_as = limit_identity(ip)  # an IPv6 address counts as its /64
    throttle = throttle_for("key-auth-failures", "AUTH_FAILURES_PER_MINUTE")
    # Checked before the key, valid or not: an address that has been guessing gets 429
    # and learns nothing, not even when a guess is right. "Not blocked" is remembered
    # for CACHE_REFRESH_SECONDS (a failure on this worker forgets it at once), so a
    # well-behaved client costs no extra storage round trip per request.
    if throttle.blocked(counted_as, current_app.config["CACHE_REFRESH_SECONDS"]):
        raise ApiError(429, "Too many failed authentications from this address; retry later",
                       code="auth_rate_limited", headers={"Retry-After": str(throttle.retry_after(counted_as))})
    raw = presented_key(query_key)
    now = utcnow()
    record = None
    if key_rules.well_formed(raw):
        record = state.snapshot.lookup_key(engine, hash_user_key(raw, current_app.config["KEY_PEPPER"]))
    if record is None or not key_is_usable(record, now) or record.user_status == "deleted":
        throttle.count_failure(counted_as)
        raise ApiError(401, INVALID_KEY_MESSAGE, code="invalid_api_key")
    if record.user_status == "suspended":
        raise ApiError(403, "This account is suspended; contact your administrator", code="account_suspended")
    if not _ip_allowed(ip, record.user_ip_allowlist) or not _ip_allowed(ip, record.key_ip_allowlist):
        raise ApiError(403, "Requests from this address are not allowed for this key", code="ip_not_allowed")
    return Caller(
        key_id=record.key_id, key_prefix=record.prefix, user_id=record.user_id, user_name=record.user_name,
        tier=record.tier, rpm=record.rpm, rpd=record.rpd, tpm=record.tpm, token_quota=record.token_quota,
        request_quota=record.request_quota, byte_quota=record.byte_quota, quota_period=record.quota_period,
        reset_day=record.reset_day, allowed_models=record.allowed_models, allowed_backends=record.allowed_backends,
        key_allowed_models=record.key_allowed_models, key_allowed_backends=record.key_allowed_backends,
    )
