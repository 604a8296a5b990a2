"""The SSRF guard's refusals: a backend address it refuses is the backend's fault,
never the upstream key's (the pass-through used to count it against the key), and the
deny-list sees through every IPv6 form that carries an IPv4 address, NAT64 included."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.proxy import url_safety
from tests.conftest import make_env, reset_database
from tests.fixtures.admin_client import Admin
from tests.fixtures.gateway_server import GatewayServer, start_gateway
from tests.pool.conftest import POOL_ENV, Pool, secret


@pytest.fixture
def guarded_gateway(migrated: str, tmp_path: Path) -> Iterator[GatewayServer]:
    reset_database(migrated)
    env = make_env(migrated, tmp_path / "instance", **{**POOL_ENV, "BLOCK_PRIVATE_UPSTREAMS": "true"})
    server = start_gateway(env, tmp_path / "gateway.log", workers=2)
    yield server
    server.stop()


def test_a_pass_through_refused_by_the_guard_does_not_mark_the_key(guarded_gateway, fake_upstream, migrated):
    admin = Admin(guarded_gateway.url)
    pool = Pool(guarded_gateway, admin, [fake_upstream], migrated)
    backend = admin.post("/backends", {"name": "internal", "kind": "http", "base_url": fake_upstream.url})
    key_id = admin.post(f"/backends/{backend['id']}/keys", {"secret": secret("internal"), "label": "k"})["id"]
    pool.upstream_keys["k"] = key_id
    client = admin.post("/keys", {"name": "c", "tier": "pro"})["key"]

    answers = [requests.get(f"{guarded_gateway.url}/proxy/internal/health", timeout=10,
                            headers={"Authorization": f"Bearer {client}"}) for _ in range(4)]

    assert [a.status_code for a in answers] == [502] * 4
    assert answers[0].json()["error"]["code"] == "upstream_unavailable"
    assert fake_upstream.stats()["total"] == 0  # never connected
    key = pool.upstream_key("k")
    assert (key["state"], key["consecutive_failures"], key["failures"]) == ("healthy", 0, 0)
    assert "BLOCK_PRIVATE_UPSTREAMS" in guarded_gateway.output()


@pytest.mark.parametrize("address", [
    "64:ff9b::7f00:1",          # NAT64 (RFC 6052) of 127.0.0.1
    "64:ff9b::a9fe:a9fe",       # NAT64 of the metadata service 169.254.169.254
    "64:ff9b::a00:1",           # NAT64 of 10.0.0.1
    "64:ff9b:1::a00:1",         # local-use NAT64 prefix (RFC 8215): never global
    "64:ff9b:1:ffff::1",
    "::7f00:1",                 # IPv4-compatible ::127.0.0.1
    "::a9fe:a9fe",              # IPv4-compatible metadata service
    "::c0a8:101",               # IPv4-compatible 192.168.1.1
])
def test_ipv6_forms_of_internal_ipv4_addresses_are_refused(address: str):
    assert url_safety.is_blocked(address)
    with pytest.raises(LookupError):
        url_safety.resolve_allowed(address, 443)


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "::808:808", "2001:4860:4860::8888", "8.8.8.8"])
def test_public_addresses_behind_those_forms_stay_allowed(address: str):
    assert not url_safety.is_blocked(address)
