"""Find the ApiKey a client presented to the public usage API. What counts as a key and
which headers carry it are ``gateway.key_rules``, shared with the proxy, so a key the
proxy accepts is never "malformed" here.

A malformed key is answered exactly like an unknown one, and both cost one HMAC and one
indexed lookup, so neither the body nor the timing tells a caller which it sent.
"""
from __future__ import annotations

from flask import Request, current_app
from sqlalchemy import select

from .. import key_rules
from ..extensions import db
from ..key_rules import well_formed
from ..models import ApiKey
from ..secrets_box import hash_user_key


def key_from_request(request: Request, allow_query: bool = False) -> str | None:
    """The raw key from the headers the proxy reads or, when ``allow_query`` is set,
    ``?key=`` (accepted for old clients; it leaks into logs)."""
    return key_rules.key_from_request(request.headers, request.args if allow_query else None)


def find_key(raw: str | None) -> ApiKey | None:
    """The key row for ``raw`` or None; never raises on hostile input."""
    candidate = raw if well_formed(raw) else "malformed"
    digest = hash_user_key(candidate, current_app.config["KEY_PEPPER"])
    key = db.session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    return key if well_formed(raw) else None
