"""Proxy fixtures: a real gunicorn+gevent gateway (one per module) in front of the fake
upstream, configured through the real admin API (``tests.fixtures.deployment``)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_env
from tests.fixtures.deployment import Deployment, deploy
from tests.fixtures.fake_upstream import FakeUpstreamProcess
from tests.fixtures.gateway_server import GatewayServer, start_gateway


@pytest.fixture(scope="module")
def gateway(migrated: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    root: Path = tmp_path_factory.mktemp("gateway")
    env = make_env(migrated, root / "instance", DISCONNECT_DRAIN_SECONDS="2", UPSTREAM_READ_TIMEOUT="5",
                   UPSTREAM_CONNECT_TIMEOUT="2")
    server = start_gateway(env, root / "gateway.log", workers=2)
    yield server
    server.stop()


@pytest.fixture
def deployment(gateway: GatewayServer, fake_upstream: FakeUpstreamProcess, migrated: str) -> Deployment:
    return deploy(gateway, fake_upstream, migrated)
