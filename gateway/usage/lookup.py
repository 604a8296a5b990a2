"""Find the ApiKey a client presented. Shared by the public usage API and (later) the
proxy, so both accept the same header spellings and treat malformed keys the same way.

A malformed key is answered exactly like an unknown one, and both cost one HMAC and one
indexed lookup, so neither the body nor the timing tells a caller which it sent.
"""
from __future__ import annotations

from flask import Request, current_app
from sqlalchemy import select

from ..extensions import db
from ..models import ApiKey
from ..secrets_box import hash_user_key

MAX_KEY_LENGTH = 200


def key_from_request(request: Request, allow_query: bool = False) -> str | None:
    """The raw key from ``Authorization: Bearer``, ``x-api-key`` (any case), or, when
    ``allow_query`` is set, ``?key=`` (accepted for old clients; it leaks into logs)."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    header = request.headers.get("X-API-Key")  # headers are case-insensitive
    if header is not None:
        return header.strip()
    if allow_query and "key" in request.args:
        return request.args.get("key", "").strip()
    return None


def well_formed(raw: str | None) -> bool:
    return bool(raw) and len(raw) <= MAX_KEY_LENGTH and raw.isascii() and raw.isprintable() and " " not in raw


def find_key(raw: str | None) -> ApiKey | None:
    """The key row for ``raw`` or None; never raises on hostile input."""
    candidate = raw if well_formed(raw) else "malformed"
    digest = hash_user_key(candidate or "malformed", current_app.config["KEY_PEPPER"])
    key = db.session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    return key if well_formed(raw) else None
