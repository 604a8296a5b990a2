"""Hardening fixtures: one real deployment shared by the whole package - gunicorn with
two gevent workers, memcached for rate-limit storage, the fake upstream - with a canary
user key, admin token and upstream secret planted at the start. Every response body a
test reads is kept (``World.saw``), and the secret-hygiene module, which pytest is
told to run last, searches all of it plus logs, database, /metrics and memcached.

Fault tests get a backend of their own (``World.backend``) so an upstream key they
make unhealthy never affects another test.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.conftest import ADMIN_TOKEN, make_env, reset_database
from tests.fixtures.admin_client import Admin
from tests.fixtures.fake_upstream import FakeUpstreamProcess
from tests.fixtures.gateway_server import GatewayServer, free_port, start_gateway
from tests.fixtures.memcached import MemcachedServer

CANARY_UPSTREAM_SECRET = "sk-upstream-HARDCANARY-7e3f9a1b2c4d5e6f80"
METRICS_TOKEN = "metrics-token-HARD-0a1b2c3d4e5f"
READ_TIMEOUT = 2  # seconds: the upstream idle/read timeout of the shared gateway
GATEWAY_SETTINGS = {
    "UPSTREAM_READ_TIMEOUT": str(READ_TIMEOUT), "UPSTREAM_CONNECT_TIMEOUT": "1", "DISCONNECT_DRAIN_SECONDS": "1",
    "IP_RPM": "100000", "GLOBAL_RPM": "1000000", "AUTH_FAILURES_PER_MINUTE": "100000",
    "METRICS_TOKEN": METRICS_TOKEN, "MAX_BODY_BYTES": str(1024 * 1024), "UPSTREAM_MAX_ATTEMPTS": "3",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The secret-hygiene check judges everything the other modules did: run it last."""
    last = [item for item in items if "hardening/test_secret_hygiene.py" in item.nodeid]
    rest = [item for item in items if item not in last]
    hardening = [i for i, item in enumerate(rest) if "tests/hardening/" in item.nodeid]
    # Last within the package (its package-scoped world must still be the same one).
    cut = hardening[-1] + 1 if hardening else len(rest)
    items[:] = rest[:cut] + last + rest[cut:]


class RecordingSession(requests.Session):
    """A requests session that keeps every non-streamed response (body and headers)."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__()
        self.sink = sink

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", 20)
        response = super().request(method, url, *args, **kwargs)
        if not kwargs.get("stream"):
            self.sink.append(response.text + repr(dict(response.headers)))
        return response


@dataclass
class World:
    gateway: GatewayServer
    upstream: FakeUpstreamProcess
    memcached: MemcachedServer
    admin: Admin
    engine: Engine
    database_url: str
    key: str
    user_id: int
    key_id: int
    seen: list[str] = field(default_factory=list)
    extra_logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def http(self) -> RecordingSession:
        return RecordingSession(self.seen)

    def saw(self, content: str | bytes) -> None:
        self.seen.append(content.decode("utf-8", "replace") if isinstance(content, bytes) else content)

    def backend(self, secret: str = "sk-upstream-plain-0000", kind: str = "openai",
                base_url: str | None = None) -> str:
        """A backend of its own with one upstream key; answers the model name routed to it."""
        model = f"hx-{uuid.uuid4().hex[:10]}"
        if base_url is None:
            base_url = self.upstream.url + ("/v1" if kind == "openai" else "")
        created = self.admin.post("/backends", {"name": model, "kind": kind, "base_url": base_url,
                                                "models": [model]})
        self.admin.post(f"/backends/{created['id']}/keys", {"secret": secret, "label": "k"})
        return model

    def new_key(self, token_quota: int | None = None, **user: Any) -> tuple[str, int, int]:
        body: dict[str, Any] = {"name": f"u-{uuid.uuid4().hex[:8]}", "tier": "pro", **user}
        if token_quota is not None:
            body["total_tokens"] = token_quota
        created = self.admin.post("/keys", body)
        return created["key"], created["user_id"], created["id"]

    def counters(self, user_id: int) -> dict[str, int]:
        """The user's usage counters summed over periods (used and reserved)."""
        with self.engine.connect() as conn:
            row = conn.execute(text(
                "SELECT COALESCE(SUM(tokens_in + tokens_out), 0), COALESCE(SUM(requests), 0), "
                "COALESCE(SUM(reserved_tokens), 0), COALESCE(SUM(reserved_requests), 0) "
                "FROM usage_counters WHERE user_id = :u"), {"u": user_id}).one()
        return {"tokens": int(row[0]), "requests": int(row[1]), "reserved_tokens": int(row[2]),
                "reserved_requests": int(row[3])}

    def log_rows(self, user_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM request_logs WHERE user_id = :u ORDER BY id"),
                                {"u": user_id}).mappings().all()
        return [dict(row) for row in rows]

    def wait_rows(self, user_id: int, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        import time

        deadline = time.monotonic() + timeout
        rows = self.log_rows(user_id)
        while len(rows) < count and time.monotonic() < deadline:
            time.sleep(0.1)
            rows = self.log_rows(user_id)
        return rows


def chat(model: str, content: str = "hello there", stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 20,
            "stream": stream, **extra}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="package")
def hard_memcached() -> Iterator[MemcachedServer]:
    server = MemcachedServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def hard_upstream() -> Iterator[FakeUpstreamProcess]:
    upstream = FakeUpstreamProcess.start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="package")
def world(migrated: str, hard_memcached: MemcachedServer, hard_upstream: FakeUpstreamProcess,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reset_database(migrated)
    root = tmp_path_factory.mktemp("hardening")
    env = make_env(migrated, root / "instance", RATELIMIT_STORAGE_URI=hard_memcached.uri, **GATEWAY_SETTINGS)
    server = start_gateway(env, root / "gateway.log", workers=2)
    admin = Admin(server.url)
    backend = admin.post("/backends", {"name": "canary-openai", "kind": "openai",
                                       "base_url": hard_upstream.url + "/v1", "models": ["gpt-*"]})
    admin.post(f"/backends/{backend['id']}/keys", {"secret": CANARY_UPSTREAM_SECRET, "label": "canary"})
    created = admin.post("/keys", {"name": "canary-user", "tier": "pro"})
    engine = create_engine(migrated)
    world = World(server, hard_upstream, hard_memcached, admin, engine, migrated, created["key"],
                  created["user_id"], created["id"])
    admin.http = world.http()
    admin.http.headers["X-Admin-Key"] = ADMIN_TOKEN
    yield world
    server.stop()
    engine.dispose()


@pytest.fixture
def gateway_env(world: World, tmp_path: Path) -> dict[str, str]:
    """Settings for an extra gateway a test starts itself (same database, same memcached)."""
    return make_env(world.database_url, tmp_path / "instance", RATELIMIT_STORAGE_URI=world.memcached.uri,
                    **GATEWAY_SETTINGS)
