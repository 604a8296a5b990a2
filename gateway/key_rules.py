"""The rules about user API keys, in one place: which string can be a key, where a
request carries it, and when a stored key still works. The proxy, the public usage API,
the key services and the CLI import all use these, so a key that works in one place is
never "malformed" or "revoked" in another. No Flask and no I/O: plain values in, plain
values out (see docs/architecture.md, Data model).

A key's lifetime has three independent timestamps:

- ``revoked_at``: when an admin revoked it (or deleted its owner). Never in the future.
- ``grace_until``: set by rotation; the superseded key keeps working until then and is
  revoked from then on, without any write at that moment.
- ``expires_at``: the expiry an admin chose.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, TypeGuard

from sqlalchemy import ColumnElement, and_, or_

# The longest key any surface accepts. Generated keys are far shorter; imported legacy
# keys may be long, and a key the proxy accepts must read the same on /api/usage.
MAX_KEY_CHARS = 256
# Imported keys only: generated keys are long and random, a short legacy key is guessable.
MIN_IMPORTED_KEY_CHARS = 20


class Headers(Protocol):
    def get(self, key: str) -> str | None: ...


class KeyTimes(Protocol):
    """Either an ``ApiKey`` row or the proxy's cached copy of one."""

    @property
    def revoked_at(self) -> datetime | None: ...

    @property
    def grace_until(self) -> datetime | None: ...

    @property
    def expires_at(self) -> datetime | None: ...


# Where clients put a key, in the order they are read: OpenAI SDKs send a Bearer token,
# Anthropic's ``x-api-key``, Google's ``x-goog-api-key``. Every one of them is a client
# credential and is never forwarded upstream (``proxy/outbound.py``).
KEY_HEADERS = ("X-API-Key", "X-Goog-API-Key")


def key_from_headers(headers: Headers) -> str | None:
    """The raw key from ``Authorization: Bearer <key>`` or, failing that, ``x-api-key``
    or ``x-goog-api-key`` (header names are case-insensitive); None when none is present."""
    auth = headers.get("Authorization") or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    for name in KEY_HEADERS:
        value = headers.get(name)
        if value:
            return value.strip()
    return None


def key_from_request(headers: Headers, query: Headers | None = None) -> str | None:
    """The key from the headers or, failing that, the ``key`` query parameter of
    ``query`` - passed only where the API's own clients put keys in the URL (the Gemini
    API, and ``/api/usage`` for old clients). A key in a URL leaks into access logs and
    proxies, so it is the last resort and every log line carries the path only."""
    raw = key_from_headers(headers)
    if raw is None and query is not None:
        value = query.get("key")
        if value is not None:
            return value.strip()
    return raw


def well_formed(raw: str | None) -> TypeGuard[str]:
    """Could ``raw`` be a stored key? 1-256 printable characters, no whitespace.
    Anything else is answered like an unknown key without a lookup."""
    # isprintable() already refuses every whitespace character but the ASCII space.
    return raw is not None and 0 < len(raw) <= MAX_KEY_CHARS and raw.isprintable() and " " not in raw


def importable_problem(raw: str) -> str | None:
    """Why ``raw`` cannot be imported as a key (None when it can): it must be
    well-formed, so the proxy will accept it, and at least 20 characters."""
    if len(raw) < MIN_IMPORTED_KEY_CHARS or any(ch.isspace() for ch in raw):
        return f"must be at least {MIN_IMPORTED_KEY_CHARS} characters without whitespace"
    if not well_formed(raw):
        return f"must be at most {MAX_KEY_CHARS} printable characters"
    return None


def is_revoked(key: KeyTimes, now: datetime) -> bool:
    """Revoked by an admin, or rotated and past its grace period."""
    return ((key.revoked_at is not None and key.revoked_at <= now)
            or (key.grace_until is not None and key.grace_until <= now))


def is_expired(key: KeyTimes, now: datetime) -> bool:
    return key.expires_at is not None and key.expires_at <= now


def is_usable(key: KeyTimes, now: datetime) -> bool:
    """Neither revoked (nor past a rotation grace) nor expired. The owner's status is a
    separate check, because a suspended owner gets a different answer (403)."""
    return not is_revoked(key, now) and not is_expired(key, now)


def not_revoked_clause(revoked_at: Any, grace_until: Any, now: datetime) -> ColumnElement[bool]:
    """``not is_revoked`` as SQL over the two columns, for bulk updates and filters."""
    return and_(revoked_at.is_(None), or_(grace_until.is_(None), grace_until > now))


def status(key: KeyTimes, owner_status: str, now: datetime) -> str:
    """The status word the admin API, the portal and the usage page show:
    revoked, expired, suspended, rotating (inside a rotation grace) or active."""
    if is_revoked(key, now):
        return "revoked"
    if is_expired(key, now):
        return "expired"
    if owner_status == "suspended":
        return "suspended"
    if owner_status == "deleted":
        return "revoked"
    if key.grace_until is not None:
        return "rotating"
    return "active"


def revocation_time(key: KeyTimes) -> datetime | None:
    """When the key stops (or stopped) working by revocation: the explicit revocation,
    else the end of its rotation grace. The admin API's ``revoked_at`` field."""
    return key.revoked_at if key.revoked_at is not None else key.grace_until
