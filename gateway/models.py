"""The data model. Every schema change goes through a Flask-Migrate migration that
runs on SQLite and PostgreSQL; ``tests/test_migrations.py`` fails when this file and
the migrations disagree.

Timestamps are naive UTC (see ``timeutil``). Secrets never live here in clear: user
keys are an HMAC digest plus a display prefix and last four characters; upstream
secrets are Fernet tokens.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask_login import UserMixin
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .extensions import Base
from .timeutil import utcnow

USER_STATUSES = ("active", "suspended", "deleted")
# What an admin may set; "deleted" is reached only through the delete action (it revokes keys).
SETTABLE_USER_STATUSES = USER_STATUSES[:2]
QUOTA_PERIODS = ("total", "monthly", "daily")
# The one list of backend kinds (admin API, portal form, bootstrap validation); each names
# the API the provider speaks and the credential header it takes (forward.credential_headers).
BACKEND_KINDS = ("openai", "anthropic", "gemini", "http")
HEALTH_STATES = ("healthy", "cooling_down", "unhealthy", "disabled")
ADMIN_ROLES = ("admin", "viewer")


class Tier(Base):
    __tablename__ = "tiers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(sa.String(32), unique=True)
    rpm: Mapped[int] = mapped_column(sa.Integer, default=30)
    rpd: Mapped[int | None] = mapped_column(sa.Integer)
    tpm: Mapped[int | None] = mapped_column(sa.Integer)
    default_token_quota: Mapped[int | None] = mapped_column(sa.BigInteger)
    default_request_quota: Mapped[int | None] = mapped_column(sa.BigInteger)
    default_byte_quota: Mapped[int | None] = mapped_column(sa.BigInteger)
    default_quota_period: Mapped[str] = mapped_column(sa.String(16), default="monthly")
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    email: Mapped[str | None] = mapped_column(sa.String(320))
    status: Mapped[str] = mapped_column(sa.String(16), default="active", index=True)
    tier_id: Mapped[int] = mapped_column(sa.ForeignKey("tiers.id"))
    token_quota: Mapped[int | None] = mapped_column(sa.BigInteger)
    request_quota: Mapped[int | None] = mapped_column(sa.BigInteger)
    byte_quota: Mapped[int | None] = mapped_column(sa.BigInteger)
    quota_period: Mapped[str] = mapped_column(sa.String(16), default="monthly")
    reset_day: Mapped[int] = mapped_column(sa.Integer, default=1)
    ip_allowlist: Mapped[list[Any]] = mapped_column(sa.JSON, default=list)
    allowed_models: Mapped[list[Any]] = mapped_column(sa.JSON, default=list)
    allowed_backends: Mapped[list[Any]] = mapped_column(sa.JSON, default=list)
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow, onupdate=utcnow)

    tier: Mapped[Tier] = relationship(lazy="joined")
    keys: Mapped[list[ApiKey]] = relationship(back_populates="user", foreign_keys="ApiKey.user_id")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    label: Mapped[str] = mapped_column(sa.String(200), default="")
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(48))
    last4: Mapped[str] = mapped_column(sa.String(4))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    rotated_from_id: Mapped[int | None] = mapped_column(sa.ForeignKey("api_keys.id"))
    grace_until: Mapped[datetime | None] = mapped_column(sa.DateTime)
    ip_allowlist: Mapped[list[Any]] = mapped_column(sa.JSON, default=list)
    allowed_models: Mapped[list[Any]] = mapped_column(sa.JSON, default=list)
    allowed_backends: Mapped[list[Any]] = mapped_column(sa.JSON, default=list)
    requests: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    tokens_in: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(sa.BigInteger, default=0)

    user: Mapped[User] = relationship(back_populates="keys", foreign_keys=[user_id])


class UsageCounter(Base):
    """One row per user and quota period, so a new period starts at zero without a
    reset job and past periods stay readable. ``reserved_*`` hold in-flight
    worst-case reservations (reserve, then settle)."""

    __tablename__ = "usage_counters"
    __table_args__ = (sa.UniqueConstraint("user_id", "period_start", name="uq_usage_user_period"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    period_start: Mapped[datetime] = mapped_column(sa.DateTime)
    tokens_in: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    requests: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    reserved_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    reserved_requests: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    reserved_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class Reservation(Base):
    """An in-flight quota reservation, kept so that a worker that dies mid-request
    does not hold quota forever: a sweep releases stale rows."""

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    counter_id: Mapped[int] = mapped_column(sa.ForeignKey("usage_counters.id"), index=True)
    tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    requests: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow, index=True)


class Backend(Base):
    __tablename__ = "backends"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    base_url: Mapped[str] = mapped_column(sa.String(2000))
    weight: Mapped[int] = mapped_column(sa.Integer, default=1)
    models: Mapped[list[Any]] = mapped_column(sa.JSON, default=list)
    model_aliases: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    prices: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    connect_timeout: Mapped[float | None] = mapped_column(sa.Float)
    read_timeout: Mapped[float | None] = mapped_column(sa.Float)
    health_check_path: Mapped[str | None] = mapped_column(sa.String(500))
    # kind=http only: relay the upstream's Set-Cookie to the client (never stored) and
    # send the client's Cookie on (KeyGate's own cookies removed); off, both are dropped.
    relay_cookies: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)

    upstream_keys: Mapped[list[UpstreamKey]] = relationship(back_populates="backend")


class UpstreamKey(Base):
    __tablename__ = "upstream_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    backend_id: Mapped[int] = mapped_column(sa.ForeignKey("backends.id"), index=True)
    label: Mapped[str] = mapped_column(sa.String(200), default="")
    secret_encrypted: Mapped[str] = mapped_column(sa.Text)
    last4: Mapped[str] = mapped_column(sa.String(4))
    weight: Mapped[int] = mapped_column(sa.Integer, default=1)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    state: Mapped[str] = mapped_column(sa.String(16), default="healthy")
    cooldown_until: Mapped[datetime | None] = mapped_column(sa.DateTime)
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, default=0)
    consecutive_successes: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    last_error_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    state_changed_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    requests: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    failures: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    tokens_in: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)

    backend: Mapped[Backend] = relationship(back_populates="upstream_keys", lazy="joined")


class RequestLog(Base):
    """Metadata of one proxied request; never prompt or completion text, never a key."""

    __tablename__ = "request_logs"
    __table_args__ = (sa.Index("ix_request_logs_user_created", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(sa.Integer)
    key_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    backend_id: Mapped[int | None] = mapped_column(sa.Integer)
    upstream_key_id: Mapped[int | None] = mapped_column(sa.Integer)
    route: Mapped[str] = mapped_column(sa.String(200))
    model: Mapped[str | None] = mapped_column(sa.String(200), index=True)
    status: Mapped[int] = mapped_column(sa.Integer)
    streamed: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    tokens_in: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    cache_creation_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    estimated: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    bytes_in: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    latency_ms: Mapped[float | None] = mapped_column(sa.Float)
    ttfb_ms: Mapped[float | None] = mapped_column(sa.Float)
    outcome: Mapped[str] = mapped_column(sa.String(32), default="ok")
    error_type: Mapped[str | None] = mapped_column(sa.String(64))
    client_ip: Mapped[str | None] = mapped_column(sa.String(64))
    cost: Mapped[float | None] = mapped_column(sa.Float)


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(sa.String(200))
    action: Mapped[str] = mapped_column(sa.String(64))
    target_type: Mapped[str] = mapped_column(sa.String(32))
    target_id: Mapped[int | None] = mapped_column(sa.Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(sa.String(64))


class Admin(UserMixin, Base):
    __tablename__ = "admins"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(256))
    role: Mapped[str] = mapped_column(sa.String(16), default="admin")
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    session_version: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(sa.DateTime)

    @property
    def is_active(self) -> bool:  # Flask-Login: a deactivated admin cannot sign in
        return bool(self.active)

    def get_id(self) -> str:
        # The session version makes sign-out and password changes end every session.
        return f"{self.id}:{self.session_version}"


class Lease(Base):
    """A named, expiring lock row, so exactly one worker across the deployment runs
    a periodic job (health probes, log retention, reservation sweep)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(sa.String(128))
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime)


class GenerationCounter(Base):
    """Monotonic counters that tell every worker its caches are stale (key revoked,
    user suspended, backend changed) without waiting for a TTL."""

    __tablename__ = "generations"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class StoredResponse(Base):
    """Which provider account holds a Responses API object (``resp_...``), and whose it
    is. A stored response lives at the one upstream key that created it, so follow-ups
    (retrieve, delete, cancel, input items, ``previous_response_id``) must go back to that
    key, and only its owner may reach it. Plain ids, no foreign keys, like request logs:
    deleting a backend or user must not fail on old rows (pruned with the logs)."""

    __tablename__ = "stored_responses"

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    backend_id: Mapped[int] = mapped_column(sa.Integer)
    upstream_key_id: Mapped[int] = mapped_column(sa.Integer)
    user_id: Mapped[int] = mapped_column(sa.Integer)
    key_id: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow, index=True)
