"""One rule for allow-lists (``gateway.addresses``) and one for API families
(``gateway.api_family``), driven through the real app: ``METRICS_ALLOW`` treats an
IPv4-mapped IPv6 client as the IPv4 address it is (as a key's ``ip_allowlist`` always
did), and a non-default PROXY_PREFIX is recognised as the pass-through everywhere."""
from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from gateway import create_app
from gateway.addresses import address_allowed
from gateway.api_family import error_format, route_family


def _app(env: dict[str, str], **settings: str) -> Any:
    app = create_app(env={**env, **settings})
    app.config["TESTING"] = True
    return app


@pytest.mark.parametrize(("address", "status"), [
    ("127.0.0.1", 200), ("::ffff:127.0.0.1", 200), ("::ffff:10.0.0.1", 403), ("10.0.0.1", 403), ("::1", 403),
])
def test_metrics_allow_matches_ipv4_mapped_clients_as_ipv4(env: dict[str, str], address: str, status: int):
    client = _app(env, METRICS_ALLOW="127.0.0.0/8").test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": address}).status_code == status


def test_a_key_allow_list_and_metrics_allow_are_one_rule(app: Any, client: Any, admin_headers: dict[str, str]):
    created = client.post("/api/admin/keys", headers=admin_headers, json={"name": "lan", "tier": "pro"}).get_json()
    assert client.patch(f"/api/admin/users/{created['user_id']}", headers=admin_headers,
                        json={"ip_allowlist": ["127.0.0.0/8"]}).status_code == 200
    bearer = {"Authorization": f"Bearer {created['key']}"}
    mapped = {"REMOTE_ADDR": "::ffff:127.0.0.1"}
    assert client.get("/v1/models", headers=bearer, environ_base=mapped).status_code == 200
    refused = client.get("/v1/models", headers=bearer, environ_base={"REMOTE_ADDR": "::ffff:10.0.0.1"})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "ip_not_allowed"
    for ip in ("::ffff:127.0.0.1", "127.0.0.1", "::ffff:10.0.0.1", "10.0.0.1", "not-an-address"):
        assert address_allowed(ip, ["127.0.0.0/8"]) == (ip in ("::ffff:127.0.0.1", "127.0.0.1"))
    assert not address_allowed("127.0.0.1", ["garbage"])


def test_a_custom_proxy_prefix_is_the_pass_through_family(env: dict[str, str], caplog: pytest.LogCaptureFixture):
    assert route_family("/gw/search/q", "/gw") == "passthrough"
    assert route_family("/proxy/search/q", "/gw") == "other"
    assert route_family("/v1/messages", "/gw") == "anthropic"
    assert route_family("/v1/chat/completions", "/gw") == "openai"
    assert [error_format(f) for f in ("openai", "anthropic", "passthrough", "admin_api")] == \
        ["openai", "anthropic", "generic", "generic"]
    logging.getLogger("gateway.request").disabled = False  # alembic's fileConfig disabled it
    client = _app(env, PROXY_PREFIX="/gw").test_client()
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        answer = client.get("/gw/search/q")  # no key: refused before any backend is looked up
    assert answer.status_code == 401
    assert answer.get_json() == {"error": {"code": "invalid_api_key", "message": answer.get_json()["error"]["message"]}}
    lines = [r for r in caplog.records if r.name == "gateway.request"]
    fields = getattr(lines[-1], "fields", {})
    assert fields["family"] == "passthrough" and fields["route"] == "/gw/search/q", json.dumps(fields)
