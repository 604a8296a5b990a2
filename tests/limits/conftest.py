"""Limits fixtures: real memcached, real gunicorn with 2 gevent workers, the fake
upstream, configured through the admin API (``tests.fixtures.deployment.deploy``).

Two gateways, each started on first use and shared by the session:
- ``tight_gateway``: tiny address/global/failed-auth limits on the session memcached,
  behind one trusted proxy so tests choose the client address with X-Forwarded-For;
- ``roomy_gateway``: generous limits on a memcached of its own, which the outage
  test stops and restarts.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import make_env
from tests.fixtures.deployment import Deployment, deploy
from tests.fixtures.gateway_server import GatewayServer, free_port, start_gateway
from tests.fixtures.memcached import MemcachedServer

TIGHT = {"IP_RPM": "8", "GLOBAL_RPM": "30", "AUTH_FAILURES_PER_MINUTE": "3", "ADMIN_AUTH_FAILURES_PER_MINUTE": "4",
         "TRUSTED_PROXY_COUNT": "1"}
ROOMY = {"IP_RPM": "100000", "GLOBAL_RPM": "1000000", "AUTH_FAILURES_PER_MINUTE": "1000"}


def _start(migrated: str, root: Path, storage: str, limits: dict[str, str]) -> GatewayServer:
    env = make_env(migrated, root / "instance", RATELIMIT_STORAGE_URI=storage, UPSTREAM_READ_TIMEOUT="30",
                   UPSTREAM_CONNECT_TIMEOUT="2", DISCONNECT_DRAIN_SECONDS="1", **limits)
    return start_gateway(env, root / "gateway.log", workers=2)


@pytest.fixture(scope="session")
def tight_gateway(migrated: str, memcached: MemcachedServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    server = _start(migrated, tmp_path_factory.mktemp("tight"), memcached.uri, TIGHT)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def roomy_memcached() -> Iterator[MemcachedServer]:
    server = MemcachedServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def roomy_gateway(migrated: str, roomy_memcached: MemcachedServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    server = _start(migrated, tmp_path_factory.mktemp("roomy"), roomy_memcached.uri, ROOMY)
    yield server
    server.stop()


@pytest.fixture
def tight(tight_gateway: GatewayServer, fake_upstream: Any, migrated: str,
          memcached: MemcachedServer) -> Deployment:
    memcached.flush()
    return deploy(tight_gateway, fake_upstream, migrated)


@pytest.fixture
def roomy(roomy_gateway: GatewayServer, fake_upstream: Any, migrated: str,
          roomy_memcached: MemcachedServer) -> Deployment:
    if not roomy_memcached.running():
        roomy_memcached.start()
    roomy_memcached.flush()
    return deploy(roomy_gateway, fake_upstream, migrated)


def chat(deployment: Deployment, text: str = "hello there", key: str | None = None, address: str | None = None,
         max_tokens: int | None = None, stream: bool = False, timeout: float = 30) -> requests.Response:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
    headers = {"Authorization": f"Bearer {key or deployment.key}"}
    if address:
        headers["X-Forwarded-For"] = address
    return requests.post(deployment.url + "/v1/chat/completions", json=body, headers=headers, timeout=timeout,
                         stream=stream)


def together(count: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` in ``count`` threads released at the same instant."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = call(index)
        except Exception as exc:  # kept for the assertion message
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def set_tier(deployment: Deployment, name: str = "pro", **fields: Any) -> None:
    tier = next(t for t in deployment.admin.get("/tiers")["items"] if t["name"] == name)
    deployment.admin.patch(f"/tiers/{tier['id']}", fields)


def set_user(deployment: Deployment, **fields: Any) -> None:
    deployment.admin.patch(f"/users/{deployment.user_id}", fields)
