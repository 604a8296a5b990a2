"""Pool fixtures: TWO fake upstreams, a real gunicorn+gevent gateway (two workers, so
health state must travel through the database) and a factory that lays out backends
and upstream keys through the real admin API.

Upstream key values steer the fake: a key containing ``fail401`` always answers 401,
``fail429`` answers 429 with ``Retry-After: 2``, ``reset`` resets the connection
before answering, ``hang`` never answers (see ``gateway/fake_upstream/server.py``).
"""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

from tests.conftest import make_env, reset_database
from tests.fixtures.admin_client import Admin
from tests.fixtures.fake_upstream import FakeUpstreamProcess
from tests.fixtures.gateway_server import GatewayServer, start_gateway

# Fast gateway settings: failures must show up in a second, not in two minutes.
POOL_ENV = {"IP_RPM": "1000000", "GLOBAL_RPM": "1000000", "UPSTREAM_READ_TIMEOUT": "5",
            "UPSTREAM_CONNECT_TIMEOUT": "2", "DISCONNECT_DRAIN_SECONDS": "1", "PROBE_INTERVAL_SECONDS": "0"}


@pytest.fixture(scope="session")
def second_upstream() -> Iterator[FakeUpstreamProcess]:
    upstream = FakeUpstreamProcess.start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def pool_gateway(migrated: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    root: Path = tmp_path_factory.mktemp("pool-gateway")
    server = start_gateway(make_env(migrated, root / "instance", **POOL_ENV), root / "gateway.log", workers=2)
    yield server
    server.stop()


def secret(tag: str) -> str:
    """An upstream secret long enough to be stored, carrying the fake's behaviour tag."""
    return f"sk-up-{tag}-0123456789abcdef"


@dataclass
class Pool:
    gateway: GatewayServer
    admin: Admin
    upstreams: list[FakeUpstreamProcess]
    database_url: str
    key: str = ""
    key_id: int = 0
    user_id: int = 0
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    upstream_keys: dict[str, int] = field(default_factory=dict)  # label -> id

    @property
    def url(self) -> str:
        return self.gateway.url

    def backend(self, name: str, upstream: int = 0, kind: str = "openai", weight: int = 1,
                keys: dict[str, tuple[str, int]] | None = None, **extra: Any) -> dict[str, Any]:
        """Create a backend on fake ``upstream`` with ``keys`` = {label: (secret, weight)}."""
        base = self.upstreams[upstream].url + ("/v1" if kind == "openai" else "")
        body = {"name": name, "kind": kind, "base_url": base, "weight": weight,
                "models": ["gpt-*"] if kind == "openai" else ["claude-*"], **extra}
        created = self.admin.post("/backends", body)
        self.backends[name] = created
        for label, (value, key_weight) in (keys or {}).items():
            made = self.admin.post(f"/backends/{created['id']}/keys",
                                   {"secret": value, "label": label, "weight": key_weight})
            self.upstream_keys[label] = made["id"]
        return created

    def client_key(self, tier: str = "load", **user: Any) -> str:
        created = self.admin.post("/keys", {"name": "pool-client", "tier": tier})
        self.key, self.key_id, self.user_id = created["key"], created["id"], created["user_id"]
        if user:
            self.admin.patch(f"/users/{self.user_id}", user)
        return self.key

    def upstream_key(self, label: str) -> dict[str, Any]:
        key_id = self.upstream_keys[label]
        return next(k for k in self.admin.get("/upstream-keys", page_size=500)["items"] if k["id"] == key_id)

    def chat(self, content: str = "hi", model: str = "gpt-4o-mini", stream: bool = False,
             key: str | None = None, **kwargs: Any) -> requests.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4,
                "stream": stream}
        return requests.post(self.url + "/v1/chat/completions", json=body, stream=stream, timeout=30,
                             headers={"Authorization": f"Bearer {key or self.key}"}, **kwargs)

    def burst(self, count: int, concurrency: int = 16, **kwargs: Any) -> list[int]:
        """``count`` small non-stream requests on a thread pool; their statuses."""
        with requests.Session() as http:
            def one(_: int) -> int:
                body = {"model": kwargs.get("model", "gpt-4o-mini"), "max_tokens": 2,
                        "messages": [{"role": "user", "content": kwargs.get("content", "hi")}]}
                return http.post(self.url + "/v1/chat/completions", json=body, timeout=30,
                                 headers={"Authorization": f"Bearer {self.key}"}).status_code

            with ThreadPoolExecutor(concurrency) as executor:
                return list(executor.map(one, range(count)))

    def sql(self, statement: str, **params: Any) -> list[Any]:
        engine = create_engine(self.database_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                rows = list(result) if result.returns_rows else []
                if not statement.lstrip().upper().startswith("SELECT"):
                    # Like every write the gateway makes to routing state, tell the
                    # workers' snapshots to reload.
                    conn.execute(text("UPDATE generations SET value = value + 1 WHERE name = 'routing'"))
                return rows
        finally:
            engine.dispose()

    def by_key(self) -> dict[str, int]:
        """Requests each fake saw, by upstream secret, both fakes together."""
        counts: dict[str, int] = {}
        for upstream in self.upstreams:
            for value, n in upstream.stats()["by_key"].items():
                counts[value] = counts.get(value, 0) + n
        return counts


@pytest.fixture
def pool(pool_gateway: GatewayServer, fake_upstream: FakeUpstreamProcess,
         second_upstream: FakeUpstreamProcess, migrated: str) -> Pool:
    reset_database(migrated)
    second_upstream.reset()
    admin = Admin(pool_gateway.url)
    admin.post("/tiers", {"name": "load", "key_prefix": "sk-load-", "rpm": 1_000_000})
    return Pool(pool_gateway, admin, [fake_upstream, second_upstream], migrated)
