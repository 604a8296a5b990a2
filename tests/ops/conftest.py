"""Ops fixtures: one real gunicorn+gevent gateway with 2 workers (metrics must sum
across them), JSON logs, one trusted proxy hop (nginx in front in the nginx tests),
and its multiprocess metrics folder where the tests can see it."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_env
from tests.fixtures.deployment import Deployment, deploy
from tests.fixtures.gateway_server import GatewayServer, start_gateway

METRICS_TOKEN = "metrics-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


def shipped_trusted_proxy_count() -> str:
    """TRUSTED_PROXY_COUNT as the shipped deployment files set it (issue 15, finding 10):
    the systemd unit and the compose file must agree, and the nginx tests run with it."""
    unit = (ROOT / "deploy/systemd/keygate.service").read_text()
    [from_unit] = [line.split("=", 2)[2] for line in unit.splitlines()
                   if line.startswith("Environment=TRUSTED_PROXY_COUNT=")]
    compose = (ROOT / "deploy/docker-compose.yml").read_text()
    [from_compose] = [line.split(":", 1)[1].strip().strip('"') for line in compose.splitlines()
                      if line.strip().startswith("TRUSTED_PROXY_COUNT:")]
    assert from_unit == from_compose, (from_unit, from_compose)
    return from_unit


@pytest.fixture(scope="module")
def ops_gateway(migrated: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    root: Path = tmp_path_factory.mktemp("ops-gateway")
    env = make_env(migrated, root / "instance", LOG_FORMAT="json", GATEWAY_ACCESS_LOG="-",
                   TRUSTED_PROXY_COUNT=shipped_trusted_proxy_count(),
                   METRICS_TOKEN=METRICS_TOKEN, PROMETHEUS_MULTIPROC_DIR=str(root / "metrics"),
                   UPSTREAM_READ_TIMEOUT="5", UPSTREAM_CONNECT_TIMEOUT="2", MAX_BODY_BYTES=str(1024 * 1024))
    server = start_gateway(env, root / "gateway.log", workers=2)
    yield server
    server.stop()


@pytest.fixture
def ops_deployment(ops_gateway: GatewayServer, fake_upstream: Any, migrated: str) -> Deployment:
    return deploy(ops_gateway, fake_upstream, migrated)


def chat(content: str = "hello", stream: bool = False, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every JSON log line of a gateway's output (gunicorn's own lines are text)."""
    entries = []
    for line in output.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries
