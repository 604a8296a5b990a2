"""Users: the owners of keys and quotas."""
from __future__ import annotations

from typing import Any

from flask import current_app
from sqlalchemy import Select, or_, select

from .. import generations, key_rules
from ..extensions import db
from ..models import QUOTA_PERIODS, SETTABLE_USER_STATUSES, ApiKey, UsageCounter, User
from ..periods import period_bounds
from ..timeutil import isoformat, utcnow
from . import audit, tiers
from .validation import ValidationError, choice, cidr_list, integer, model_list, parse_body, string_list, text


def _email(value: Any) -> Any:
    """Shape only (one '@', no spaces): enough to catch a value pasted into the wrong field."""
    value = text(320)(value)
    if value in (None, ""):
        return None
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain.strip(".") or any(ch.isspace() for ch in value):
        raise ValueError("must be an email address like name@example.com")
    return value


FIELDS = {
    "name": text(200, required=True),
    "email": _email,
    "tier": text(64, required=True),
    "status": choice(SETTABLE_USER_STATUSES),
    "token_quota": integer(0, nullable=True),
    "request_quota": integer(0, nullable=True),
    "byte_quota": integer(0, nullable=True),
    "quota_period": choice(QUOTA_PERIODS),
    "reset_day": integer(1, 28),
    "ip_allowlist": cidr_list,
    "allowed_models": model_list,
    "allowed_backends": string_list(),
    "notes": text(5000, allow_newlines=True),
}
READ_ONLY = ("id", "created_at", "updated_at", "usage", "keys", "tier_id", "period_start", "period_end")
SEARCH_MAX_CHARS = 100


def search(text_query: str | None, status: str | None) -> Select[User]:
    """Users newest first, for the admin API list and the portal list alike: ``status``
    selects one status, none means every user not deleted (a deleted user stays
    findable, but only when asked for); ``text_query`` matches a part of the name or
    email, case-insensitively."""
    query = select(User).order_by(User.id.desc())
    query = query.where(User.status == status) if status else query.where(User.status != "deleted")
    needle = (text_query or "").strip()[:SEARCH_MAX_CHARS]
    if needle:
        like = f"%{needle}%"
        query = query.where(or_(User.name.ilike(like), User.email.ilike(like)))
    return query


def current_usage(user: User) -> dict[str, Any]:
    start, end = period_bounds(user.quota_period, user.reset_day, utcnow(),
                               current_app.config["QUOTA_TIMEZONE"])
    counter = db.session.scalar(
        select(UsageCounter).where(UsageCounter.user_id == user.id, UsageCounter.period_start == start)
    )
    used: dict[str, Any] = {
        "tokens_in": counter.tokens_in if counter else 0,
        "tokens_out": counter.tokens_out if counter else 0,
        "requests": counter.requests if counter else 0,
        "bytes": counter.bytes if counter else 0,
        "reserved_tokens": counter.reserved_tokens if counter else 0,
    }
    used["tokens"] = used["tokens_in"] + used["tokens_out"]
    used["period_start"] = isoformat(start) if user.quota_period != "total" else None
    used["period_end"] = isoformat(end)
    return used


def to_dict(user: User, with_usage: bool = True) -> dict[str, Any]:
    out = {
        "id": user.id, "name": user.name, "email": user.email, "status": user.status,
        "tier": user.tier.name, "token_quota": user.token_quota, "request_quota": user.request_quota,
        "byte_quota": user.byte_quota, "quota_period": user.quota_period, "reset_day": user.reset_day,
        "ip_allowlist": user.ip_allowlist or [], "allowed_models": user.allowed_models or [],
        "allowed_backends": user.allowed_backends or [], "notes": user.notes or "",
        "created_at": isoformat(user.created_at), "updated_at": isoformat(user.updated_at),
    }
    if with_usage:
        out["usage"] = current_usage(user)
    return out


def _resolve_tier(data: dict[str, Any]) -> None:
    if "tier" in data:
        tier = tiers.by_name(data.pop("tier"))
        if tier is None:
            raise ValidationError({"tier": "no tier with that name"})
        data["tier_id"] = tier.id
        data["_tier"] = tier


def create(body: Any, actor: str, ip: str | None) -> User:
    data = parse_body(body, FIELDS, partial=False, required=("name",), ignore=READ_ONLY)
    data.setdefault("tier", "dev")
    _resolve_tier(data)
    tier = data.pop("_tier")
    data.setdefault("token_quota", tier.default_token_quota)
    data.setdefault("request_quota", tier.default_request_quota)
    data.setdefault("byte_quota", tier.default_byte_quota)
    data.setdefault("quota_period", tier.default_quota_period)
    user = User(**data)
    db.session.add(user)
    db.session.flush()
    audit.log_action(actor, "user.create", "user", user.id, {k: v for k, v in data.items() if k != "notes"}, ip)
    return user


def update(user: User, body: Any, actor: str, ip: str | None) -> User:
    if user.status == "deleted":
        raise ValidationError({"status": "the user is deleted"})
    data = parse_body(body, FIELDS, partial=True, ignore=READ_ONLY)
    _resolve_tier(data)
    data.pop("_tier", None)
    for key, value in data.items():
        setattr(user, key, value)
    audit.log_action(actor, "user.update", "user", user.id, {k: v for k, v in data.items() if k != "notes"}, ip)
    generations.bump(generations.AUTH)
    return user


def delete(user: User, actor: str, ip: str | None) -> None:
    """Soft delete: the row stays (usage history, logs) and every key is revoked."""
    now = utcnow()
    user.status = "deleted"
    revoked = 0
    # A rotating key is live until its grace ends; deleting the owner ends it now.
    live = key_rules.not_revoked_clause(ApiKey.revoked_at, ApiKey.grace_until, now)
    for key in db.session.scalars(select(ApiKey).where(ApiKey.user_id == user.id, live)):
        key.revoked_at = now
        key.grace_until = None
        revoked += 1
    audit.log_action(actor, "user.delete", "user", user.id, {"revoked_keys": revoked}, ip)
    generations.bump(generations.AUTH)
