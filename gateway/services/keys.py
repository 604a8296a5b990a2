"""User API keys: issue, import, rotate with grace, revoke. The full key exists only in
the return value of ``issue``/``rotate``/``create_user_and_key``; the database keeps
its HMAC digest, a display prefix and the last four characters."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select

from .. import generations, key_rules
from ..extensions import db
from ..models import ApiKey, User
from ..secrets_box import display_parts, generate_user_key, hash_user_key, mask
from ..timeutil import isoformat, utcnow
from . import audit, users
from .validation import ValidationError, cidr_list, integer, model_list, parse_body, string_list, text, timestamp

KEY_FIELDS = {
    "label": text(200),
    "expires_at": timestamp,
    "ip_allowlist": cidr_list,
    "allowed_models": model_list,
    "allowed_backends": string_list(),
}
READ_ONLY = ("id", "prefix", "last4", "masked", "created_at", "last_used_at", "status", "user_id", "owner")
MAX_GRACE_SECONDS = 30 * 24 * 3600


def status(key: ApiKey) -> str:
    return key_rules.status(key, key.user.status, utcnow())


def to_dict(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id, "user_id": key.user_id, "owner": key.user.name, "label": key.label,
        "prefix": key.prefix, "last4": key.last4, "masked": mask(key.prefix, key.last4),
        "status": status(key), "created_at": isoformat(key.created_at),
        "last_used_at": isoformat(key.last_used_at), "expires_at": isoformat(key.expires_at),
        "revoked_at": isoformat(key_rules.revocation_time(key)), "grace_until": isoformat(key.grace_until),
        "rotated_from_id": key.rotated_from_id, "ip_allowlist": key.ip_allowlist or [],
        "allowed_models": key.allowed_models or [], "allowed_backends": key.allowed_backends or [],
        "requests": key.requests, "tokens_in": key.tokens_in, "tokens_out": key.tokens_out,
    }


def _store(user: User, plaintext: str, data: dict[str, Any], rotated_from: int | None = None) -> ApiKey:
    pepper = current_app.config["KEY_PEPPER"]
    prefix, last4 = display_parts(plaintext, user.tier.key_prefix)
    key = ApiKey(user_id=user.id, key_hash=hash_user_key(plaintext, pepper), prefix=prefix, last4=last4,
                 rotated_from_id=rotated_from, **data)
    db.session.add(key)
    db.session.flush()
    return key


def _check_expiry(data: dict[str, Any]) -> None:
    if data.get("expires_at") is not None and data["expires_at"] <= utcnow():
        raise ValidationError({"expires_at": "must be in the future"})


def issue(user: User, body: Any, actor: str, ip: str | None) -> tuple[ApiKey, str]:
    """A new key for ``user``; returns (row, full key). The caller shows the key once."""
    if user.status == "deleted":
        raise ValidationError({"user": "the user is deleted"})
    data = parse_body(body or {}, KEY_FIELDS, partial=True, ignore=READ_ONLY)
    _check_expiry(data)
    plaintext = generate_user_key(user.tier.key_prefix)
    key = _store(user, plaintext, data)
    audit.log_action(actor, "key.create", "key", key.id,
                     {"user_id": user.id, "label": key.label, "masked": mask(key.prefix, key.last4)}, ip)
    return key, plaintext


def import_plaintext(user: User, plaintext: str, label: str, actor: str) -> ApiKey:
    """Adopt a key a legacy client already holds, so it keeps working through KeyGate."""
    problem = key_rules.importable_problem(plaintext)
    if problem:
        raise ValidationError({"key": problem})
    digest = hash_user_key(plaintext, current_app.config["KEY_PEPPER"])
    if db.session.scalar(select(ApiKey.id).where(ApiKey.key_hash == digest)) is not None:
        raise ValidationError({"key": "is already registered"})
    key = _store(user, plaintext, {"label": label})
    audit.log_action(actor, "key.import", "key", key.id,
                     {"user_id": user.id, "masked": mask(key.prefix, key.last4)}, None)
    generations.bump(generations.AUTH)  # a worker may have cached this digest as unknown
    return key


CREATE_SHORTCUT_FIELDS = {
    "name": text(200, required=True),
    "tier": text(64),
    "total_tokens": integer(0, nullable=True),
    "email": text(320),
    "label": text(200),
    "expires_at": timestamp,
}


def create_user_and_key(user_body: Any, key_body: Any, actor: str, ip: str | None) -> tuple[ApiKey, str]:
    """A user and its first key as one unit: if the key is refused (a past expiry, a
    bad label) after the user row was flushed, the exception reaches the caller's
    ``committed()`` and neither row is stored. Used by the admin API shortcut, the
    ``create-user`` command and the demo."""
    user = users.create(user_body, actor, ip)
    return issue(user, key_body, actor, ip)


def create_from_shortcut(body: Any, actor: str, ip: str | None) -> tuple[ApiKey, str]:
    """``POST /api/admin/keys``: a user with a total token quota and its first key."""
    data = parse_body(body, CREATE_SHORTCUT_FIELDS, partial=False, required=("name",))
    user_body: dict[str, Any] = {"name": data["name"], "tier": data.get("tier") or "dev"}
    if "email" in data:
        user_body["email"] = data["email"]
    if "total_tokens" in data:
        user_body["token_quota"] = data["total_tokens"]
        user_body["quota_period"] = "total"
    # issue() validates its own body, so hand it the caller's raw values, not parsed ones.
    key_body = {k: body[k] for k in ("label", "expires_at") if k in body}
    return create_user_and_key(user_body, key_body, actor, ip)


def update(key: ApiKey, body: Any, actor: str, ip: str | None) -> ApiKey:
    data = parse_body(body, KEY_FIELDS, partial=True, ignore=READ_ONLY)
    for field, value in data.items():
        setattr(key, field, value)
    detail = {k: (isoformat(v) if isinstance(v, datetime) else v) for k, v in data.items()}
    audit.log_action(actor, "key.update", "key", key.id, detail, ip)
    generations.bump(generations.AUTH)
    return key


def revoke(key: ApiKey, actor: str, ip: str | None) -> ApiKey:
    now = utcnow()
    if not key_rules.is_revoked(key, now):  # an earlier revocation keeps its time
        key.revoked_at = now
        key.grace_until = None
    audit.log_action(actor, "key.revoke", "key", key.id, {"masked": mask(key.prefix, key.last4)}, ip)
    generations.bump(generations.AUTH)
    return key


def rotate(key: ApiKey, body: Any, actor: str, ip: str | None) -> tuple[ApiKey, str]:
    """A new key for the same owner; the old one works until ``grace_seconds`` pass."""
    data = parse_body(body or {}, {"grace_seconds": integer(0, MAX_GRACE_SECONDS), "label": text(200)},
                      partial=True)
    if status(key) not in ("active", "rotating"):
        raise ValidationError({"key": f"a {status(key)} key cannot be rotated"})
    grace = data.get("grace_seconds", 3600)
    now = utcnow()
    plaintext = generate_user_key(key.user.tier.key_prefix)
    new_key = _store(key.user, plaintext, {
        "label": data.get("label", key.label), "expires_at": key.expires_at,
        "ip_allowlist": list(key.ip_allowlist or []), "allowed_models": list(key.allowed_models or []),
        "allowed_backends": list(key.allowed_backends or []),
    }, rotated_from=key.id)
    grace_until = now + timedelta(seconds=grace)
    if key.grace_until is not None:  # rotated again: a second rotation never extends the first grace
        grace_until = min(grace_until, key.grace_until)
    key.grace_until = grace_until  # valid until then, revoked from then on (key_rules.is_revoked)
    audit.log_action(actor, "key.rotate", "key", key.id,
                     {"new_key_id": new_key.id, "grace_seconds": grace,
                      "masked": mask(new_key.prefix, new_key.last4)}, ip)
    generations.bump(generations.AUTH)
    return new_key, plaintext
