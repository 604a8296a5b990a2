"""Audit trail: one row per change, with who, what and from where - never a secret."""
from __future__ import annotations

from typing import Any

from ..extensions import db
from ..models import AuditLog

_SECRET_FIELDS = {"secret", "key", "key_hash", "password", "password_hash", "secret_encrypted", "token"}


def scrub(detail: dict[str, Any]) -> dict[str, Any]:
    """Drop secret-bearing fields so a caller cannot leak one into the audit log by mistake."""
    return {k: ("[redacted]" if k in _SECRET_FIELDS else v) for k, v in detail.items()}


def log_action(actor: str, action: str, target_type: str, target_id: int | None,
           detail: dict[str, Any] | None = None, ip: str | None = None) -> AuditLog:
    entry = AuditLog(actor=actor, action=action, target_type=target_type, target_id=target_id,
                     detail=scrub(detail or {}), ip=ip)
    db.session.add(entry)
    return entry


def to_dict(entry: AuditLog) -> dict[str, Any]:
    from ..timeutil import isoformat

    return {"id": entry.id, "created_at": isoformat(entry.created_at), "actor": entry.actor,
            "action": entry.action, "target_type": entry.target_type, "target_id": entry.target_id,
            "detail": entry.detail, "ip": entry.ip}
