"""Failure policy and period rollover through the whole proxy flow, in process (Flask
test client, real fake upstream, real memcached or none): fail-open is counted and
logged once, fail-closed answers 503, and a request flow crosses a monthly boundary
under a controlled clock (time-machine: the production code reads the real clock)."""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import time_machine
from sqlalchemy import select

from gateway import create_app
from gateway.extensions import db
from gateway.models import UsageCounter
from gateway.worker_state import state_of
from tests.conftest import ADMIN_TOKEN
from tests.fixtures.gateway_server import free_port, start_gateway
from tests.fixtures.memcached import MemcachedServer

ADMIN = {"X-Admin-Key": ADMIN_TOKEN}


def _app(env: dict[str, str], **settings: str) -> Any:
    app = create_app(env={**env, **settings})
    app.config["TESTING"] = True
    return app


def _deploy(client: Any, upstream_url: str, **user: Any) -> str:
    backend = client.post("/api/admin/backends", headers=ADMIN, json={
        "name": "fake-openai", "kind": "openai", "base_url": upstream_url + "/v1", "models": ["gpt-*"]}).get_json()
    client.post(f"/api/admin/backends/{backend['id']}/keys", headers=ADMIN, json={"secret": "sk-upstream-x" * 3})
    created = client.post("/api/admin/keys", headers=ADMIN, json={"name": "policy", "tier": "pro"}).get_json()
    if user:
        assert client.patch(f"/api/admin/users/{created['user_id']}", headers=ADMIN, json=user).status_code == 200
    return created["key"]


def _chat(client: Any, key: str, text: str = "hello") -> Any:
    response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "gpt-4o-mini", "max_tokens": 20,
                                 "messages": [{"role": "user", "content": text}]})
    response.get_data()  # run the relay generator to its end, so usage is recorded
    return response


def test_fail_open_serves_counts_every_failure_and_logs_the_outage_once(env, fake_upstream, caplog, capfd):
    app = _app(env, RATELIMIT_STORAGE_URI=f"memcached://127.0.0.1:{free_port()}")  # nothing listens there
    client = app.test_client()
    health = state_of(app).storage  # this app's worker state: no outage, no failure counted yet
    assert health.errors == 0 and not health.down
    with caplog.at_level(logging.ERROR, logger="gateway.limiter"):
        key = _deploy(client, fake_upstream.url)  # the admin API's failure throttle already meets the outage
        answers = [_chat(client, key) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    assert "X-RateLimit-Limit" not in answers[0].headers
    # 3 admin calls (their failure throttle), then per proxied request at least the
    # global limit (before the view) and the key limit
    assert health.errors >= 3 + 3 * 2
    outage = [r for r in caplog.records if "rate-limit storage unavailable" in r.getMessage()]
    assert len(outage) == 1 and "failing open" in outage[0].getMessage()
    # nothing else reaches the output either (e.g. a helper greenlet's traceback per request)
    assert "Traceback" not in capfd.readouterr().err


def test_fail_closed_answers_503_in_the_callers_format_and_recovers(env, fake_upstream, caplog):
    server = MemcachedServer(free_port())
    app = _app(env, RATELIMIT_STORAGE_URI=server.uri, RATELIMIT_FAIL_OPEN="false")
    client = app.test_client()
    key = _deploy(client, fake_upstream.url)
    refused = _chat(client, key)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert refused.get_json()["error"]["code"] == "ratelimit_unavailable"
    assert refused.get_json()["error"]["type"] == "service_unavailable"
    anthropic = client.post("/v1/messages", headers={"x-api-key": key},
                            json={"model": "claude-x", "max_tokens": 5,
                                  "messages": [{"role": "user", "content": "hi"}]})
    assert anthropic.status_code == 503 and anthropic.get_json()["error"]["type"] == "overloaded_error"
    server.start()
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.limiter"):
            answer = _chat(client, key)
        assert answer.status_code == 200 and answer.headers["X-RateLimit-Limit"] == "120"
        assert any("rate-limit storage recovered" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        server.stop()


def test_a_monthly_quota_rolls_over_on_its_reset_day_through_the_proxy(env, fake_upstream):
    app = _app(env)
    client = app.test_client()
    with time_machine.travel(datetime(2026, 5, 9, 23, 59, 30, tzinfo=UTC), tick=False) as clock:
        key = _deploy(client, fake_upstream.url, token_quota=50, quota_period="monthly", reset_day=10)
        assert _chat(client, key, "one two three").status_code == 200  # 3 + 16 tokens
        assert _chat(client, key, "one two three").status_code == 200  # 38 of 50; a third (24) no longer fits
        exhausted = _chat(client, key, "one two three")
        assert exhausted.status_code == 402
        assert exhausted.get_json()["error"]["quota"]["resets_at"] == "2026-05-10T00:00:00Z"
        assert exhausted.get_json()["error"]["quota"]["tokens_used"] == 38
        clock.move_to(datetime(2026, 5, 10, 0, 0, 1, tzinfo=UTC))
        assert _chat(client, key, "one two three").status_code == 200
    with app.app_context():
        rows = db.session.execute(select(UsageCounter.period_start, UsageCounter.tokens_in + UsageCounter.tokens_out,
                                         UsageCounter.requests).order_by(UsageCounter.period_start)).all()
    assert [tuple(r) for r in rows] == [(datetime(2026, 4, 10), 38, 2), (datetime(2026, 5, 10), 19, 1)]


def test_gunicorn_warns_loudly_when_several_workers_share_memory_storage(env, tmp_path: Path):
    server = start_gateway({**env, "RATELIMIT_STORAGE_URI": "memory://"}, tmp_path / "gateway.log", workers=2)
    try:
        output = server.output()
    finally:
        server.stop()
    assert "WARNING: RATELIMIT_STORAGE_URI=memory:// with 2 workers" in output
    assert "every rate limit is multiplied by 2" in output
