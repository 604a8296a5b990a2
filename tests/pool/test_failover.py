"""Failover happens only before the first byte: connection resets, timeouts and
redirects are handled without the client noticing or without duplicated output, and
the retry budget keeps a dying provider from being hammered."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from gateway.proxy.forward import RetryBudget
from tests.fixtures.http_server import serving
from tests.pool.conftest import Pool, secret


def test_a_reset_before_the_first_byte_is_retried_transparently(pool: Pool):
    pool.backend("alpha", upstream=0, keys={"good": (secret("good"), 1), "flaky": (secret("flaky-reset"), 1)})
    pool.backend("beta", upstream=1, keys={"other": (secret("other"), 1)})
    pool.client_key()

    started = time.monotonic()
    statuses = []
    while pool.upstream_key("flaky")["state"] != "unhealthy" and len(statuses) < 40:
        statuses.append(pool.chat().status_code)
    detected = time.monotonic() - started
    statuses += pool.burst(100)

    assert statuses == [200] * len(statuses)
    flaky = pool.upstream_key("flaky")
    assert flaky["state"] == "unhealthy" and flaky["last_error"] == "connection error: ConnectionError"
    hits = pool.by_key()[secret("flaky-reset")]
    assert hits == 3  # three failures, then routed around
    print(f"\nreset key: unhealthy after {len(statuses) - 100} requests / {detected * 1000:.0f} ms, "
          f"{hits} resets absorbed, 0 client errors in {len(statuses)} requests")


def test_a_reset_mid_stream_is_not_retried_and_ends_with_an_error_event(pool: Pool):
    pool.backend("alpha", upstream=0, keys={"good": (secret("good"), 1)})
    pool.backend("beta", upstream=1, keys={"other": (secret("other"), 1)})
    pool.client_key()

    with pool.chat("[[reset_after:2]] [[tokens:10]]", stream=True, ) as response:
        lines = [line for line in response.iter_lines() if line.startswith(b"data: ")]

    assert response.status_code == 200
    error = json.loads(lines[-1][6:])
    assert error["error"]["code"] == "stream_interrupted"
    assert b"data: [DONE]" not in lines
    assert sum(pool.by_key().values()) == 1  # never re-sent: the client already had output
    deadline = time.monotonic() + 5
    while not (rows := pool.admin.get("/logs")["items"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    [row] = rows
    assert row["outcome"] == "upstream_error" and row["streamed"] is True


def test_an_upstream_that_never_answers_is_504(pool: Pool):
    pool.backend("alpha", upstream=0, read_timeout=1, keys={"stuck": (secret("stuck-hang"), 1)})
    pool.client_key()

    started = time.monotonic()
    response = pool.chat()

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert 0.9 < time.monotonic() - started < 3
    assert pool.upstream_key("stuck")["last_error"] == "read timeout before first byte"


class _Redirector(BaseHTTPRequestHandler):
    target = ""

    def do_POST(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@pytest.fixture
def redirector(fake_upstream) -> Iterator[str]:
    handler = type("Redirect", (_Redirector,), {"target": fake_upstream.url})
    with serving(handler) as url:
        yield url


def test_a_redirect_from_the_upstream_is_never_followed(pool: Pool, redirector: str):
    created = pool.admin.post("/backends", {"name": "moved", "kind": "openai", "base_url": redirector + "/v1",
                                            "models": ["gpt-*"]})
    pool.admin.post(f"/backends/{created['id']}/keys", {"secret": secret("moved")})
    pool.client_key()

    response = pool.chat()

    assert response.status_code == 502
    assert "redirect" in response.json()["error"]["message"]
    assert pool.upstreams[0].stats()["total"] == 0  # the redirect target never saw our credential


def test_the_retry_budget_allows_a_share_of_requests_plus_a_minimum():
    budget = RetryBudget(ratio=0.2, minimum=2)
    for _ in range(10):
        budget.record_request()
    granted = sum(budget.try_spend() for _ in range(10))
    assert granted == 2 + 2  # 20% of 10 requests, plus the minimum


def test_the_retry_budget_stops_failover_against_a_dying_provider(app, client, admin_headers, fake_upstream):
    app.config.update(UPSTREAM_RETRY_BUDGET_RATIO=0.0, UPSTREAM_RETRY_BUDGET_MIN=1, UPSTREAM_MAX_ATTEMPTS=3)
    backend = client.post("/api/admin/backends", headers=admin_headers, json={
        "name": "dying", "kind": "openai", "base_url": fake_upstream.url + "/v1", "models": ["gpt-*"]}).get_json()
    for tag in ("d1", "d2", "d3"):
        client.post(f"/api/admin/backends/{backend['id']}/keys", headers=admin_headers,
                    json={"secret": secret(f"{tag}-fail500")})
    key = client.post("/api/admin/keys", headers=admin_headers, json={"name": "c", "tier": "pro"}).get_json()["key"]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    statuses = [client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}).status_code
                for _ in range(2)]

    assert statuses == [502, 502]
    # 2 attempts, then 1: one retry per minute left (each request also sends one
    # content-free probe that shows the 500s were the key's, not the request's)
    assert [r["method"] for r in fake_upstream.requests()].count("POST") == 3


def test_a_loopback_backend_is_refused_at_connect_time_when_private_upstreams_are_blocked(
        app, client, admin_headers, fake_upstream, caplog):
    app.config["BLOCK_PRIVATE_UPSTREAMS"] = True
    backend = client.post("/api/admin/backends", headers=admin_headers, json={
        "name": "internal", "kind": "openai", "base_url": fake_upstream.url + "/v1", "models": ["gpt-*"]}).get_json()
    upstream_key = client.post(f"/api/admin/backends/{backend['id']}/keys", headers=admin_headers,
                               json={"secret": secret("internal")}).get_json()
    key = client.post("/api/admin/keys", headers=admin_headers, json={"name": "c", "tier": "pro"}).get_json()["key"]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    for name in ("gateway.url_safety", "gateway.forward"):
        # The session's in-process `flask db upgrade` ran alembic's fileConfig, which
        # disables every logger that existed then; a real server never does that.
        logging.getLogger(name).disabled = False
    with caplog.at_level(logging.ERROR, logger="gateway"):
        response = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})

    assert response.status_code == 502
    assert "not allowed" in response.get_json()["error"]["message"]
    assert fake_upstream.stats()["total"] == 0
    assert any("127.0.0.1" in r.getMessage() and "BLOCK_PRIVATE_UPSTREAMS" in r.getMessage() for r in caplog.records)
    keys = client.get("/api/admin/upstream-keys", headers=admin_headers).get_json()["items"]
    assert [k["state"] for k in keys if k["id"] == upstream_key["id"]] == ["healthy"]  # the address, not the key
