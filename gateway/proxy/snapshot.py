"""Per-worker caches for the hot path: key lookups, backends and the upstream pool.

An admin change (revoked key, suspended user, edited tier/backend) or a pool health
transition bumps a generation counter in the same transaction as the change. Each
worker re-reads the counters (one small SELECT) at most every CACHE_REFRESH_SECONDS
(0.5 s by default, at most 1 s; 0 = every request) and drops whatever they say is
stale, so every worker sees a change within that time; the worker that made the
change sees it on its next request. Under load this takes the SELECT off nearly every
request (it was one of three statements per request on PostgreSQL). Everything else
the read phase needs comes from memory: no database session is held while the
request waits on quota, the upstream or the client (holding one there exhausted the
pool under load). The proxy views call ``refresh`` as their first step after the
address limit. One ``Snapshot`` per app, in its ``WorkerState`` (see
docs/architecture.md, How changes reach other workers).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from .. import generations
from ..models import ApiKey, Backend, GenerationCounter, Tier, UpstreamKey, User

AUTH_CACHE_SIZE = 20_000
NEGATIVE_TTL_SECONDS = 5.0
LOCAL_BUMP_WINDOW_SECONDS = 1.0


@dataclass(frozen=True)
class CachedKey:
    """What authentication needs about one key, its owner and tier (no secret)."""

    key_id: int
    prefix: str
    revoked_at: datetime | None
    grace_until: datetime | None
    expires_at: datetime | None
    key_ip_allowlist: tuple[str, ...]
    key_allowed_models: tuple[str, ...]
    key_allowed_backends: tuple[str, ...]
    user_id: int
    user_name: str
    user_status: str
    user_ip_allowlist: tuple[str, ...]
    allowed_models: tuple[str, ...]
    allowed_backends: tuple[str, ...]
    token_quota: int | None
    request_quota: int | None
    byte_quota: int | None
    quota_period: str
    reset_day: int
    tier: str
    rpm: int
    rpd: int | None
    tpm: int | None


@dataclass(frozen=True)
class BackendInfo:
    id: int
    name: str
    kind: str
    base_url: str
    weight: int
    models: tuple[str, ...]
    model_aliases: dict[str, Any]
    prices: dict[str, Any]
    enabled: bool
    connect_timeout: float | None
    read_timeout: float | None
    health_check_path: str | None
    relay_cookies: bool = False


@dataclass(frozen=True)
class KeyInfo:
    id: int
    backend_id: int
    weight: int
    enabled: bool
    state: str
    cooldown_until: datetime | None
    consecutive_failures: int
    secret_encrypted: str


class Snapshot:
    """One worker's snapshot of one database (the app's): key lookups, backends and the
    upstream pool, with the generation counters they were built from. Lives in the
    app's ``WorkerState``; ``WorkerState.reset()`` replaces it with an empty one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.auth_generation = -1
        self.routing_generation = -1
        self.checked_at = -1e9  # monotonic start time of the last completed counter read
        self.loaded = False
        self.read_lock = threading.Lock()  # a gevent lock in a patched worker
        # Generation bumps made by this worker (``generations.bump``): the counters are
        # re-read as soon as this moves, so the worker that revoked a key (or saw an
        # upstream key fail) never serves from its stale copy, whatever the interval.
        self.local_bumps = 0
        self.seen_local_bumps = -1  # a fresh worker reads on every request for a moment
        self.read_every_request_until = 0.0
        self.auth: OrderedDict[str, tuple[CachedKey | None, float]] = OrderedDict()
        self.backends: list[BackendInfo] = []
        self.keys: dict[int, list[KeyInfo]] = {}

    def note_local_bump(self) -> None:
        self.local_bumps += 1

    def refresh(self, engine: Engine, max_age: float = 0.0) -> None:
        """Read the generation counters and reload whatever they say is stale - unless
        they were read less than ``max_age`` seconds ago and this worker has bumped none
        since.

        A request never proceeds on a snapshot older than ``max_age``: while one greenlet
        reads, the others wait for it (the read yields to them under gevent) and use its
        result only if that read started after they arrived."""
        arrived = time.monotonic()
        bumps = self.local_bumps
        if bumps != self.seen_local_bumps:
            # The bump may not be committed yet: read on every request for a moment.
            self.seen_local_bumps, self.read_every_request_until = bumps, arrived + LOCAL_BUMP_WINDOW_SECONDS
        elif self.loaded and arrived - self.checked_at < max_age and arrived >= self.read_every_request_until:
            return
        with self.read_lock:
            if self.loaded and self.checked_at >= arrived:
                return  # a read that began after this request arrived has just finished
            started = time.monotonic()
            self._read_counters(engine)
            # Stamped with the read's start, once it succeeded: what it saw is at least that fresh.
            self.checked_at, self.loaded = started, True

    def _read_counters(self, engine: Engine) -> None:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":  # a lone read: no BEGIN/ROLLBACK round trips
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            values = dict(conn.execute(select(GenerationCounter.name, GenerationCounter.value)).all())
            auth_gen = int(values.get(generations.AUTH, 0))
            routing_gen = int(values.get(generations.ROUTING, 0))
            if auth_gen != self.auth_generation:
                with self.lock:
                    self.auth.clear()
                    self.auth_generation = auth_gen
            if routing_gen != self.routing_generation:
                backends, keys = _load_routing(conn)
                with self.lock:
                    self.backends, self.keys = backends, keys
                    self.routing_generation = routing_gen

    def keys_of(self, backend_ids: list[int]) -> list[KeyInfo]:
        return [k for b in backend_ids for k in self.keys.get(b, ())]

    def key_info(self, key_id: int) -> KeyInfo | None:
        for keys in self.keys.values():
            for key in keys:
                if key.id == key_id:
                    return key
        return None

    def lookup_key(self, engine: Engine, digest: str) -> CachedKey | None:
        """The key record for ``digest`` from the cache, else from the database (and cached,
        negatively too: unknown digests are remembered briefly so guessing costs no query)."""
        now = time.monotonic()
        with self.lock:
            hit = self.auth.get(digest)
            if hit is not None:
                record, stored = hit
                if record is not None or now - stored < NEGATIVE_TTL_SECONDS:
                    self.auth.move_to_end(digest)
                    return record
        generation = self.auth_generation
        record = _load_key(engine, digest)
        with self.lock:
            if generation == self.auth_generation:  # not invalidated while we read
                self.auth[digest] = (record, now)
                if len(self.auth) > AUTH_CACHE_SIZE:
                    self.auth.popitem(last=False)
        return record


def _load_routing(conn: Connection) -> tuple[list[BackendInfo], dict[int, list[KeyInfo]]]:
    backends = [
        BackendInfo(b.id, b.name, b.kind, b.base_url.rstrip("/"), b.weight, tuple(b.models or ()),
                    dict(b.model_aliases or {}), dict(b.prices or {}), bool(b.enabled), b.connect_timeout,
                    b.read_timeout, b.health_check_path, bool(b.relay_cookies))
        for b in conn.execute(select(Backend).order_by(Backend.id))
    ]
    keys: dict[int, list[KeyInfo]] = {}
    for k in conn.execute(select(UpstreamKey).order_by(UpstreamKey.id)):
        keys.setdefault(k.backend_id, []).append(
            KeyInfo(k.id, k.backend_id, k.weight, bool(k.enabled), k.state, k.cooldown_until,
                    k.consecutive_failures, k.secret_encrypted))
    return backends, keys


def _load_key(engine: Engine, digest: str) -> CachedKey | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(ApiKey.id, ApiKey.prefix, ApiKey.revoked_at, ApiKey.grace_until, ApiKey.expires_at,
                   ApiKey.ip_allowlist,
                   ApiKey.allowed_models, ApiKey.allowed_backends, User.id, User.name, User.status,
                   User.ip_allowlist, User.allowed_models, User.allowed_backends, User.token_quota,
                   User.request_quota, User.byte_quota, User.quota_period, User.reset_day, Tier.name,
                   Tier.rpm, Tier.rpd, Tier.tpm)
            .join(User, ApiKey.user_id == User.id).join(Tier, User.tier_id == Tier.id)
            .where(ApiKey.key_hash == digest)
        ).first()
    if row is None:
        return None
    (key_id, prefix, revoked_at, grace_until, expires_at, key_ips, key_models, key_backends, user_id, user_name,
     status, user_ips, models, backend_names, token_quota, request_quota, byte_quota, period, reset_day, tier, rpm,
     rpd, tpm) = row
    return CachedKey(key_id, prefix, revoked_at, grace_until, expires_at, tuple(key_ips or ()),
                     tuple(key_models or ()),
                     tuple(key_backends or ()), user_id, user_name, status, tuple(user_ips or ()),
                     tuple(models or ()), tuple(backend_names or ()), token_quota, request_quota, byte_quota,
                     period, reset_day, tier, rpm, rpd, tpm)
