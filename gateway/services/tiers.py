"""Tiers: named plans with a key prefix, rate limits and default quotas."""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from .. import generations
from ..extensions import db
from ..models import QUOTA_PERIODS, Tier, User
from ..timeutil import isoformat
from . import audit
from .validation import ValidationError, choice, integer, name, parse_body, text

FIELDS = {
    "name": name(64),
    "key_prefix": text(32, required=True),
    "rpm": integer(1, 1_000_000),
    "rpd": integer(1, 1_000_000_000, nullable=True),
    "tpm": integer(1, 10_000_000_000, nullable=True),
    "default_token_quota": integer(0, nullable=True),
    "default_request_quota": integer(0, nullable=True),
    "default_byte_quota": integer(0, nullable=True),
    "default_quota_period": choice(QUOTA_PERIODS),
}
READ_ONLY = ("id", "created_at", "users")


def to_dict(tier: Tier) -> dict[str, Any]:
    return {
        "id": tier.id, "name": tier.name, "key_prefix": tier.key_prefix, "rpm": tier.rpm,
        "rpd": tier.rpd, "tpm": tier.tpm, "default_token_quota": tier.default_token_quota,
        "default_request_quota": tier.default_request_quota,
        "default_byte_quota": tier.default_byte_quota,
        "default_quota_period": tier.default_quota_period, "created_at": isoformat(tier.created_at),
    }


def _check_prefix(prefix: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_-]{2,31}-", prefix):
        raise ValidationError({"key_prefix": "must be 2-31 letters, digits, '_' or '-' ending in '-' (e.g. sk-dev-)"})


def _check_unique(data: dict[str, Any], tier_id: int | None) -> None:
    errors: dict[str, str] = {}
    for field in ("name", "key_prefix"):
        if field in data:
            clash = db.session.scalar(select(Tier).where(getattr(Tier, field) == data[field]))
            if clash is not None and clash.id != tier_id:
                errors[field] = "is already used by another tier"
    if errors:
        raise ValidationError(errors)


def create(body: Any, actor: str, ip: str | None) -> Tier:
    data = parse_body(body, FIELDS, partial=False, required=("name", "key_prefix"), ignore=READ_ONLY)
    _check_prefix(data["key_prefix"])
    _check_unique(data, None)
    tier = Tier(**data)
    db.session.add(tier)
    db.session.flush()
    audit.log_action(actor, "tier.create", "tier", tier.id, data, ip)
    return tier


def update(tier: Tier, body: Any, actor: str, ip: str | None) -> Tier:
    data = parse_body(body, FIELDS, partial=True, ignore=READ_ONLY)
    if "key_prefix" in data:
        _check_prefix(data["key_prefix"])
    _check_unique(data, tier.id)
    for key, value in data.items():
        setattr(tier, key, value)
    audit.log_action(actor, "tier.update", "tier", tier.id, data, ip)
    generations.bump(generations.AUTH)  # cached callers carry the tier's limits
    return tier


def delete(tier: Tier, actor: str, ip: str | None) -> None:
    in_use = db.session.scalar(select(func.count()).select_from(User).where(User.tier_id == tier.id))
    if in_use:
        raise ValidationError({"tier": f"is used by {in_use} user(s); move them to another tier first"})
    audit.log_action(actor, "tier.delete", "tier", tier.id, {"name": tier.name}, ip)
    db.session.delete(tier)
    generations.bump(generations.AUTH)  # cached callers carry the tier's limits


def by_name(tier_name: str) -> Tier | None:
    return db.session.scalar(select(Tier).where(Tier.name == tier_name))
