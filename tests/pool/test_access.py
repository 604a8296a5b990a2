"""Per-user and per-key access control, in-process (the Flask test client sets the
peer address): allowed models and backends, CIDR allowlists for IPv4 and IPv6 with
X-Forwarded-For trusted only through TRUSTED_PROXY_COUNT proxies, expiry, rotation
grace - and ``GET /v1/models`` listing exactly what routing accepts."""
from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from gateway import create_app
from gateway.timeutil import isoformat, utcnow
from tests.pool.conftest import secret

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


class Gate:
    """An in-process gateway with two openai backends on the fake upstream."""

    def __init__(self, client: Any, admin_headers: dict[str, str], upstream: Any) -> None:
        self.client, self.headers, self.upstream = client, admin_headers, upstream
        self.backends = {}
        for name, models, aliases in (("alpha", ["gpt-4o-mini", "gpt-4o", "gpt-4.1-*"], {"fast": "gpt-4o-mini"}),
                                      ("beta", ["gpt-4o-mini", "o3-*"], {})):
            backend = self.admin("post", "/backends", {"name": name, "kind": "openai", "models": models,
                                                       "base_url": upstream.url + "/v1", "model_aliases": aliases})
            self.admin("post", f"/backends/{backend['id']}/keys", {"secret": secret(name)})
            self.backends[name] = backend
        made = self.admin("post", "/keys", {"name": "client", "tier": "pro"})
        self.key, self.key_id, self.user_id = made["key"], made["id"], made["user_id"]

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = getattr(self.client, method)("/api/admin" + path, headers=self.headers, json=body)
        assert response.status_code in (200, 201), response.get_data(as_text=True)
        return response.get_json()

    def chat(self, model: str = "gpt-4o-mini", key: str | None = None, ip: str = "127.0.0.1",
             forwarded: str | None = None):  # type: ignore[no-untyped-def]
        headers = {"Authorization": f"Bearer {key or self.key}"}
        if forwarded is not None:
            headers["X-Forwarded-For"] = forwarded
        return self.client.post("/v1/chat/completions", json={"model": model, **CHAT}, headers=headers,
                                environ_base={"REMOTE_ADDR": ip})

    def backends_used(self) -> list[str]:
        return sorted({r["headers"]["authorization"].split("-")[2] for r in self.upstream.requests()})


@pytest.fixture
def gate(client, admin_headers, fake_upstream) -> Gate:
    return Gate(client, admin_headers, fake_upstream)


def test_models_listing_and_routing_agree(gate: Gate):
    gate.admin("patch", f"/users/{gate.user_id}", {"allowed_models": ["gpt-4o-mini", "fast", "gpt-4.1-*"]})
    gate.admin("post", "/backends", {"name": "off", "kind": "openai", "base_url": gate.upstream.url + "/v1",
                                     "models": ["gpt-secret"], "enabled": False})

    listed = [m["id"] for m in gate.client.get("/v1/models", headers={"Authorization": f"Bearer {gate.key}"})
              .get_json()["data"]]

    assert listed == ["fast", "gpt-4o-mini"]  # patterns cannot be listed; the disabled backend is hidden
    for model in listed + ["gpt-4.1-nano"]:  # ...but a name matching an allowed pattern routes
        assert gate.chat(model).status_code == 200, model
    assert gate.upstream.requests()[0]["body"]["model"] == "gpt-4o-mini"  # the alias was rewritten
    assert gate.chat("gpt-4o").status_code == 403  # served, but not allowed: not listed either
    assert gate.chat("gpt-secret").status_code == 403  # not allowed for this user
    gate.admin("patch", f"/users/{gate.user_id}", {"allowed_models": []})
    assert gate.chat("gpt-secret").status_code == 404  # only a disabled backend serves it


def test_allowed_models_on_the_user_and_on_the_key_both_apply(gate: Gate):
    gate.admin("patch", f"/users/{gate.user_id}", {"allowed_models": ["gpt-4o*"]})
    gate.admin("patch", f"/keys/{gate.key_id}", {"allowed_models": ["gpt-4o-mini"]})

    assert gate.chat("gpt-4o-mini").status_code == 200
    refused = gate.chat("gpt-4o")  # the user may, the key may not
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "model_not_allowed"
    assert gate.chat("o3-mini").status_code == 403  # neither may


def test_allowed_backends_narrow_the_pool_and_refuse_when_none_is_left(gate: Gate):
    gate.admin("patch", f"/users/{gate.user_id}", {"allowed_backends": ["beta"]})

    assert [gate.chat().status_code for _ in range(4)] == [200] * 4
    assert gate.backends_used() == ["beta"]  # alpha also serves the model, but not to this user
    refused = gate.chat("gpt-4o")  # only alpha serves it
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "backend_not_allowed"
    gate.admin("patch", f"/keys/{gate.key_id}", {"allowed_backends": ["alpha"]})
    assert gate.chat().status_code == 403  # user: beta only; key: alpha only -> nothing left


def test_ip_allowlists_accept_ipv4_and_ipv6_ranges_and_refuse_the_rest(gate: Gate):
    gate.admin("patch", f"/users/{gate.user_id}", {"ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"]})
    gate.admin("patch", f"/keys/{gate.key_id}", {"ip_allowlist": ["10.1.0.0/16", "2001:db8:1::/48"]})

    assert gate.chat(ip="10.1.2.3").status_code == 200
    assert gate.chat(ip="2001:db8:1::7").status_code == 200
    for outside in ("10.2.0.1", "192.0.2.1", "2001:db8:2::1", "2001:db9::1"):  # user-only, neither, ...
        refused = gate.chat(ip=outside)
        assert refused.status_code == 403, outside
        assert refused.get_json()["error"]["code"] == "ip_not_allowed"


def test_x_forwarded_for_is_ignored_without_a_trusted_proxy(gate: Gate):
    gate.admin("patch", f"/users/{gate.user_id}", {"ip_allowlist": ["2001:db8::/32"]})

    assert gate.chat(ip="198.51.100.9", forwarded="2001:db8::7").status_code == 403


def test_behind_one_trusted_proxy_the_address_it_saw_counts_and_a_forged_one_does_not(
        env, client, admin_headers, fake_upstream):
    gate = Gate(client, admin_headers, fake_upstream)
    gate.admin("patch", f"/users/{gate.user_id}", {"ip_allowlist": ["2001:db8::/32", "192.0.2.0/24"]})
    proxied = create_app(env={**env, "TRUSTED_PROXY_COUNT": "1"})
    gate.client = proxied.test_client()

    # nginx on 127.0.0.1 appends the peer it saw to whatever the client sent
    assert gate.chat(ip="127.0.0.1", forwarded="2001:db8::7").status_code == 200
    assert gate.chat(ip="127.0.0.1", forwarded="192.0.2.10").status_code == 200
    forged = gate.chat(ip="127.0.0.1", forwarded="192.0.2.10, 203.0.113.50")  # client claimed an allowed address
    assert forged.status_code == 403
    assert gate.chat(ip="127.0.0.1").status_code == 403  # no header: the proxy's own address


def test_an_expired_key_is_refused(gate: Gate):
    made = gate.admin("post", f"/users/{gate.user_id}/keys",
                      {"label": "short", "expires_at": isoformat(utcnow() + timedelta(seconds=2))})

    # The API keeps whole seconds, so the key lives 1-2 s: long enough for the first
    # request on a busy machine, and surely over after 2.1 s.
    assert gate.chat(key=made["key"]).status_code == 200
    time.sleep(2.1)
    expired = gate.chat(key=made["key"])
    assert expired.status_code == 401 and expired.get_json()["error"]["code"] == "invalid_api_key"
    assert gate.chat().status_code == 200  # the owner's other key is unaffected


def test_during_rotation_grace_both_keys_work_and_after_it_only_the_new_one(gate: Gate):
    rotated = gate.admin("post", f"/keys/{gate.key_id}/rotate", {"grace_seconds": 1})
    new_key = rotated["key"]

    assert gate.chat(key=gate.key).status_code == 200
    assert gate.chat(key=new_key).status_code == 200
    time.sleep(1.1)
    assert gate.chat(key=gate.key).status_code == 401
    assert gate.chat(key=new_key).status_code == 200
