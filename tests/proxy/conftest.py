"""Proxy fixtures: the fake upstream and a real gunicorn+gevent gateway in front of it,
configured through the real admin API."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ADMIN_TOKEN, make_env, reset_database
from tests.fixtures.fake_upstream import fake_upstream  # noqa: F401  (fixture)
from tests.fixtures.gateway_server import GatewayServer, start_gateway

UPSTREAM_SECRET = "sk-upstream-CANARY-4f1d2c3b5a697887"
ANTHROPIC_SECRET = "sk-ant-upstream-CANARY-99aa88bb77cc"


class Admin:
    """A thin client for the admin JSON API of a running gateway."""

    def __init__(self, base: str):
        self.base = base + "/api/admin"
        self.http = requests.Session()
        self.http.headers["X-Admin-Key"] = ADMIN_TOKEN

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(self.base + path, json=body, timeout=10)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.patch(self.base + path, json=body, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        response = self.http.get(self.base + path, params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def delete(self, path: str) -> dict[str, Any]:
        response = self.http.delete(self.base + path, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


@dataclass
class Deployment:
    gateway: GatewayServer
    upstream: Any
    admin: Admin
    user_id: int
    key: str
    key_id: int
    openai_backend_id: int
    anthropic_backend_id: int

    @property
    def url(self) -> str:
        return self.gateway.url

    def logs(self, **filters: Any) -> list[dict[str, Any]]:
        return self.admin.get("/logs", page_size=500, **filters)["items"]

    def wait_for_logs(self, count: int, timeout: float = 10.0, **filters: Any) -> list[dict[str, Any]]:
        import time

        deadline = time.monotonic() + timeout
        rows = self.logs(**filters)
        while len(rows) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            rows = self.logs(**filters)
        return rows


@pytest.fixture(scope="module")
def gateway(migrated: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    root: Path = tmp_path_factory.mktemp("gateway")
    env = make_env(migrated, root / "instance", DISCONNECT_DRAIN_SECONDS="2", UPSTREAM_READ_TIMEOUT="5",
                   UPSTREAM_CONNECT_TIMEOUT="2")
    server = start_gateway(env, root / "gateway.log", workers=2)
    yield server
    server.stop()


def deploy(gateway: GatewayServer, upstream: Any, migrated: str, token_quota: int | None = None,
           tier: str = "pro") -> Deployment:
    reset_database(migrated)
    upstream.reset()
    admin = Admin(gateway.url)
    openai_backend = admin.post("/backends", {
        "name": "fake-openai", "kind": "openai", "base_url": upstream.url + "/v1",
        "models": ["gpt-*", "text-embedding-3-small"], "model_aliases": {"fast": "gpt-4o-mini"},
    })
    admin.post(f"/backends/{openai_backend['id']}/keys", {"secret": UPSTREAM_SECRET, "label": "primary"})
    anthropic_backend = admin.post("/backends", {
        "name": "fake-anthropic", "kind": "anthropic", "base_url": upstream.url, "models": ["claude-*"],
    })
    admin.post(f"/backends/{anthropic_backend['id']}/keys", {"secret": ANTHROPIC_SECRET, "label": "primary"})
    body: dict[str, Any] = {"name": "client-one", "tier": tier}
    if token_quota is not None:
        body["total_tokens"] = token_quota
    created = admin.post("/keys", body)
    return Deployment(gateway, upstream, admin, created["user_id"], created["key"], created["id"],
                      openai_backend["id"], anthropic_backend["id"])


@pytest.fixture
def deployment(gateway: GatewayServer, fake_upstream: Any, migrated: str) -> Deployment:  # noqa: F811
    return deploy(gateway, fake_upstream, migrated)
