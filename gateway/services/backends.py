"""Backends (providers) and their pooled upstream keys. Upstream secrets are
write-only: encrypted on the way in, masked on every way out."""
from __future__ import annotations

from typing import Any

from flask import current_app
from sqlalchemy import func, select

from .. import generations
from ..extensions import db
from ..models import BACKEND_KINDS, Backend, UpstreamKey
from ..secrets_box import SecretBox
from ..timeutil import isoformat, utcnow
from . import audit
from .validation import (
    ValidationError,
    boolean,
    choice,
    http_url,
    integer,
    model_list,
    model_map,
    name,
    number,
    parse_body,
    price_map,
    text,
)

BACKEND_FIELDS = {
    "name": name(64),
    "kind": choice(BACKEND_KINDS),
    "base_url": http_url,
    "weight": integer(0, 1000),
    "models": model_list,
    "model_aliases": model_map,
    "prices": price_map,
    "enabled": boolean,
    "connect_timeout": number(0.1),
    "read_timeout": number(0.1),
    "health_check_path": text(500),
    "relay_cookies": boolean,
}
BACKEND_READ_ONLY = ("id", "created_at", "upstream_keys", "key_count", "keys")
MIN_SECRET_CHARS = 8
SHOW_LAST4_FROM = 16  # shorter secrets show no characters at all: four of eight is half the secret


def _secret(value: Any) -> str:
    value = text(4096, required=True)(value)
    if len(value) < MIN_SECRET_CHARS or any(ch.isspace() for ch in value):
        raise ValueError(f"must be at least {MIN_SECRET_CHARS} characters without whitespace")
    return value


def _last4(secret: str) -> str:
    return secret[-4:] if len(secret) >= SHOW_LAST4_FROM else ""


KEY_FIELDS = {
    "secret": _secret,
    "label": text(200),
    "weight": integer(0, 1000),
    "enabled": boolean,
}
KEY_READ_ONLY = ("id", "backend_id", "backend", "masked", "last4", "state", "cooldown_until", "last_error",
                 "last_error_at", "requests", "failures", "tokens_in", "tokens_out", "created_at",
                 "last_used_at", "consecutive_failures", "consecutive_successes", "state_changed_at")


def box() -> SecretBox:
    return current_app.extensions["keygate.box"]


def backend_to_dict(backend: Backend) -> dict[str, Any]:
    counts = dict(db.session.execute(
        select(UpstreamKey.state, func.count()).where(UpstreamKey.backend_id == backend.id).group_by(UpstreamKey.state)
    ).all())
    return {
        "id": backend.id, "name": backend.name, "kind": backend.kind, "base_url": backend.base_url,
        "weight": backend.weight, "models": backend.models or [], "model_aliases": backend.model_aliases or {},
        "prices": backend.prices or {}, "enabled": backend.enabled, "connect_timeout": backend.connect_timeout,
        "read_timeout": backend.read_timeout, "health_check_path": backend.health_check_path,
        "relay_cookies": bool(backend.relay_cookies), "created_at": isoformat(backend.created_at),
        "key_count": int(sum(counts.values())), "key_states": {k: int(v) for k, v in counts.items()},
    }


def key_to_dict(key: UpstreamKey) -> dict[str, Any]:
    return {
        "id": key.id, "backend_id": key.backend_id, "backend": key.backend.name, "label": key.label,
        "masked": f"****{key.last4}", "last4": key.last4, "weight": key.weight, "enabled": key.enabled,
        "state": key.state, "cooldown_until": isoformat(key.cooldown_until),
        "consecutive_failures": key.consecutive_failures, "last_error": key.last_error,
        "last_error_at": isoformat(key.last_error_at), "state_changed_at": isoformat(key.state_changed_at),
        "last_used_at": isoformat(key.last_used_at), "requests": key.requests, "failures": key.failures,
        "tokens_in": key.tokens_in, "tokens_out": key.tokens_out, "created_at": isoformat(key.created_at),
    }


def _check_unique_name(value: str, backend_id: int | None) -> None:
    clash = db.session.scalar(select(Backend).where(Backend.name == value))
    if clash is not None and clash.id != backend_id:
        raise ValidationError({"name": "is already used by another backend"})


def _check_relay_cookies(kind: str, relay_cookies: bool) -> None:
    """Cookies are relayed on the generic pass-through only: on an LLM backend the flag
    would promise something that never happens."""
    if relay_cookies and kind != "http":
        raise ValidationError({"relay_cookies": "applies to kind http backends only"})


def create_backend(body: Any, actor: str, ip: str | None) -> Backend:
    data = parse_body(body, BACKEND_FIELDS, partial=False, required=("name", "kind", "base_url"),
                      ignore=BACKEND_READ_ONLY)
    _check_unique_name(data["name"], None)
    _check_relay_cookies(data["kind"], bool(data.get("relay_cookies")))
    backend = Backend(**data)
    db.session.add(backend)
    db.session.flush()
    audit.log_action(actor, "backend.create", "backend", backend.id, data, ip)
    generations.bump(generations.ROUTING)
    return backend


def update_backend(backend: Backend, body: Any, actor: str, ip: str | None) -> Backend:
    data = parse_body(body, BACKEND_FIELDS, partial=True, ignore=BACKEND_READ_ONLY)
    if "name" in data:
        _check_unique_name(data["name"], backend.id)
    _check_relay_cookies(data.get("kind", backend.kind), bool(data.get("relay_cookies", backend.relay_cookies)))
    for key, value in data.items():
        setattr(backend, key, value)
    audit.log_action(actor, "backend.update", "backend", backend.id, data, ip)
    generations.bump(generations.ROUTING)
    return backend


def delete_backend(backend: Backend, actor: str, ip: str | None) -> None:
    for key in list(backend.upstream_keys):
        db.session.delete(key)
    audit.log_action(actor, "backend.delete", "backend", backend.id, {"name": backend.name}, ip)
    db.session.delete(backend)
    generations.bump(generations.ROUTING)


def add_key(backend: Backend, body: Any, actor: str, ip: str | None) -> UpstreamKey:
    data = parse_body(body, KEY_FIELDS, partial=False, required=("secret",), ignore=KEY_READ_ONLY)
    secret = data.pop("secret")
    key = UpstreamKey(backend_id=backend.id, secret_encrypted=box().encrypt(secret), last4=_last4(secret),
                      state="healthy", state_changed_at=utcnow(), **data)
    db.session.add(key)
    db.session.flush()
    audit.log_action(actor, "upstream_key.create", "upstream_key", key.id,
                     {"backend_id": backend.id, "label": key.label, "last4": key.last4}, ip)
    generations.bump(generations.ROUTING)
    return key


def update_key(key: UpstreamKey, body: Any, actor: str, ip: str | None) -> UpstreamKey:
    data = parse_body(body, KEY_FIELDS, partial=True, ignore=KEY_READ_ONLY)
    detail = {k: v for k, v in data.items() if k != "secret"}
    if "secret" in data:
        secret = data.pop("secret")
        key.secret_encrypted = box().encrypt(secret)
        key.last4 = _last4(secret)
        detail["secret_replaced"] = True
        detail["last4"] = key.last4
    for field, value in data.items():
        setattr(key, field, value)
    audit.log_action(actor, "upstream_key.update", "upstream_key", key.id, detail, ip)
    generations.bump(generations.ROUTING)
    return key


def delete_key(key: UpstreamKey, actor: str, ip: str | None) -> None:
    audit.log_action(actor, "upstream_key.delete", "upstream_key", key.id, {"last4": key.last4}, ip)
    db.session.delete(key)
    generations.bump(generations.ROUTING)


def reset_key(key: UpstreamKey, actor: str, ip: str | None) -> UpstreamKey:
    previous = key.state
    key.state = "healthy"
    key.cooldown_until = None
    key.consecutive_failures = 0
    key.consecutive_successes = 0
    key.state_changed_at = utcnow()
    audit.log_action(actor, "upstream_key.reset", "upstream_key", key.id, {"from": previous}, ip)
    generations.bump(generations.ROUTING)
    return key


def rotate_encryption() -> int:
    """Re-encrypt every upstream secret under the newest ENCRYPTION_KEY; returns the count."""
    count = 0
    for key in db.session.scalars(select(UpstreamKey)):
        key.secret_encrypted = box().rotate(key.secret_encrypted)
        count += 1
    audit.log_action("cli", "encryption.rotate", "upstream_key", None, {"count": count}, None)
    generations.bump(generations.ROUTING)  # workers cache the ciphertext with the pool
    return count
