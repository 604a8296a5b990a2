"""The health state machine, shared by both gateway workers through the database:
a live 401 makes a key unhealthy and the prober's own 401 disables it, 429 cools for
Retry-After, 3 failures make a key unhealthy, probes and half-open trials bring it
back, and an empty pool answers 503 with Retry-After. Failures here are key-caused
(key tags); content-caused ones blame no key (test_request_faults.py)."""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from gateway import create_app
from tests.conftest import make_env, reset_database
from tests.fixtures.gateway_server import start_gateway
from tests.pool.conftest import POOL_ENV, Pool, secret


def _cooldown_end(pool: Pool, label: str) -> datetime:
    """Exact (the admin API rounds to seconds)."""
    [(value,)] = pool.sql("SELECT cooldown_until FROM upstream_keys WHERE id = :id", id=pool.upstream_keys[label])
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _utc_now() -> datetime:
    from gateway.timeutil import utcnow

    return utcnow()


def test_a_key_answering_401_is_disabled_and_traffic_continues_without_client_errors(pool: Pool, tmp_path: Path):
    pool.backend("alpha", upstream=0, keys={"good": (secret("good"), 1), "dead": (secret("dead-fail401"), 1)})
    pool.backend("beta", upstream=1, keys={"other": (secret("other"), 1)})
    pool.client_key()

    latencies = []
    for _ in range(10):  # sequential: the request that meets the dead key shows the failover cost
        started = time.monotonic()
        assert pool.chat().status_code == 200
        latencies.append((time.monotonic() - started) * 1000)
    statuses = pool.burst(200)

    assert statuses.count(200) == 200
    # Changed rule: live traffic is one client's evidence, so it only makes the key
    # unhealthy; the prober's content-free request is what disables it.
    dead = pool.upstream_key("dead")
    assert dead["state"] == "unhealthy"
    assert dead["last_error"] == "upstream answered 401"
    hits = pool.by_key()[secret("dead-fail401")]
    assert hits <= 2  # at most once per worker, then never again
    app = create_app(env=make_env(pool.database_url, tmp_path / "instance"))
    assert app.test_cli_runner().invoke(args=["probe-upstreams"]).exit_code == 0
    dead = pool.upstream_key("dead")
    assert dead["state"] == "disabled" and dead["last_error"] == "probe answered 401"
    assert secret("dead-fail401") not in str(pool.admin.get("/upstream-keys"))
    latencies.sort()
    print(f"\n401 key: {hits} upstream hit(s), 0 client errors in 210 requests; "
          f"median latency {latencies[5]:.1f} ms, slowest (the failover) {latencies[-1]:.1f} ms")


def test_429_with_retry_after_cools_the_key_for_exactly_that_long(pool: Pool):
    pool.backend("alpha", upstream=0, keys={"good": (secret("good"), 1), "limited": (secret("limited-fail429"), 1)})
    pool.client_key()

    statuses = []
    while secret("limited-fail429") not in pool.by_key() and len(statuses) < 10:
        statuses.append(pool.chat().status_code)  # until one meets the 429 and fails over
    assert statuses == [200] * len(statuses) and len(statuses) < 10
    before = _utc_now()
    assert pool.upstream_key("limited")["state"] == "cooling_down"
    remaining = (_cooldown_end(pool, "limited") - before).total_seconds()
    assert 0.5 < remaining <= 2.0  # the fake's Retry-After: 2

    assert pool.burst(20) == [200] * 20
    assert pool.by_key()[secret("limited-fail429")] == 1  # untouched while cooling
    time.sleep(remaining + 0.2)
    assert pool.burst(4) == [200] * 4
    assert pool.by_key()[secret("limited-fail429")] >= 2  # tried again once the cooldown ended


def test_a_later_shorter_retry_after_never_shortens_a_cooldown(app, client, admin_headers, fake_upstream):
    from gateway.extensions import db
    from gateway.models import UpstreamKey
    from gateway.proxy import pool as key_pool
    from gateway.worker_state import state_of

    backend = client.post("/api/admin/backends", headers=admin_headers, json={
        "name": "alpha", "kind": "openai", "base_url": fake_upstream.url + "/v1", "models": ["gpt-*"]}).get_json()
    key = client.post(f"/api/admin/backends/{backend['id']}/keys", headers=admin_headers,
                      json={"secret": secret("k")}).get_json()
    state = state_of(app)
    with app.app_context():
        key_pool.report_failure(state, db.engine, key["id"], 429, "upstream answered 429", 60)
        first = db.session.get(UpstreamKey, key["id"]).cooldown_until
        db.session.remove()
        key_pool.report_failure(state, db.engine, key["id"], 429, "upstream answered 429", 2)
        row = db.session.get(UpstreamKey, key["id"])
        assert row.state == "cooling_down" and row.cooldown_until == first
        assert (first - _utc_now()).total_seconds() > 55


def test_three_failures_make_a_key_unhealthy_and_two_probe_successes_bring_it_back(pool: Pool, tmp_path: Path):
    # Changed: the 503s come from the key (tag fail503, which its probe meets too), not
    # from a [[status:503]] prompt - a content-caused 503 now blames no key.
    pool.backend("alpha", upstream=0, keys={"solo": (secret("solo-fail503"), 1)})
    pool.client_key()

    assert pool.chat().status_code == 502
    assert pool.chat().status_code == 502
    assert pool.upstream_key("solo")["state"] == "healthy"
    assert pool.chat().status_code == 502
    solo = pool.upstream_key("solo")
    assert solo["state"] == "unhealthy" and solo["consecutive_failures"] == 3
    assert solo["last_error"] == "upstream answered 503"
    pool.admin.patch(f"/upstream-keys/{solo['id']}", {"secret": secret("solo")})  # the provider recovers
    pool.upstreams[0].reset()  # forget the in-request probes: count the prober's only
    # Every key down: 503 with a Retry-After no later than the next half-open trial.
    down = pool.chat()
    assert down.status_code == 503 and down.json()["error"]["code"] == "no_healthy_upstream"
    assert 1 <= int(down.headers["Retry-After"]) <= 11

    app = create_app(env=make_env(pool.database_url, tmp_path / "instance"))
    runner = app.test_cli_runner()
    first = runner.invoke(args=["probe-upstreams"])
    assert first.exit_code == 0, first.output
    assert f"key {pool.upstream_keys['solo']} (alpha): ok - probe answered 200" in first.output
    assert pool.upstream_key("solo")["state"] == "unhealthy"  # one success is not enough
    assert pool.sql("SELECT consecutive_successes FROM upstream_keys")[0][0] == 1
    second = runner.invoke(args=["probe-upstreams"])
    assert second.exit_code == 0, second.output
    revived = pool.upstream_key("solo")
    assert revived["state"] == "healthy" and revived["cooldown_until"] is None
    assert pool.chat().status_code == 200
    assert runner.invoke(args=["probe-upstreams"]).output.strip() == "probed 0 key(s)"  # healthy keys are not probed
    probes = [r for r in pool.upstreams[0].requests() if r["method"] == "GET"]
    assert [r["path"] for r in probes] == ["/v1/models", "/v1/models"]
    assert probes[0]["headers"]["authorization"] == f"Bearer {secret('solo')}"


def test_a_half_open_trial_lets_one_request_through_per_interval_when_every_key_is_down(pool: Pool):
    # Changed: key-caused 500s (tag fail500), then the key recovers; content-caused
    # 500s no longer count against a key.
    pool.backend("alpha", upstream=0, keys={"solo": (secret("solo-fail500"), 1)})
    pool.client_key()
    for _ in range(3):
        pool.chat()
    assert pool.upstream_key("solo")["state"] == "unhealthy"
    pool.admin.patch(f"/upstream-keys/{pool.upstream_keys['solo']}", {"secret": secret("solo")})

    pool.sql("UPDATE upstream_keys SET cooldown_until = :past", past=datetime(2000, 1, 1))
    assert pool.chat().status_code == 200  # the trial: the key works again
    blocked = pool.chat()  # the next trial waits an interval
    assert blocked.status_code == 503 and 1 <= int(blocked.headers["Retry-After"]) <= 11
    assert pool.upstream_key("solo")["state"] == "unhealthy"
    pool.sql("UPDATE upstream_keys SET cooldown_until = :past", past=datetime(2000, 1, 1))
    assert pool.chat().status_code == 200
    assert pool.upstream_key("solo")["state"] == "healthy"  # two successes in a row


def test_every_key_rate_limited_is_503_with_retry_after(pool: Pool):
    pool.backend("alpha", upstream=0, keys={"l1": (secret("l1-fail429"), 1), "l2": (secret("l2-fail429"), 1)})
    pool.client_key()

    # Changed: two 429s for one request may be the request's doing, so a content-free
    # probe decides and at most one key cools per request: l1 on the first, l2 on the
    # second (its own 429 and probe), and only the third finds nothing usable.
    first = pool.chat()
    assert first.status_code == 503 and first.headers["Retry-After"] == "3"
    second = pool.chat()
    assert second.status_code == 503 and second.headers["Retry-After"] == "3"
    assert {pool.upstream_key(label)["state"] for label in ("l1", "l2")} == {"cooling_down"}
    spent = sum(pool.by_key().values())
    assert spent == 5  # 2 POSTs + 1 probe, then 1 POST + 1 probe
    again = pool.chat()
    assert again.status_code == 503 and again.json()["error"]["code"] == "no_healthy_upstream"
    assert 1 <= int(again.headers["Retry-After"]) <= 3
    assert sum(pool.by_key().values()) == spent  # the third request spent nothing upstream


def test_every_key_disabled_is_503_without_a_retry_after(pool: Pool):
    pool.backend("alpha", upstream=0, keys={"dead": (secret("dead-fail403"), 1)})
    pool.client_key()

    assert pool.chat().status_code == 502
    gone = pool.chat()
    assert gone.status_code == 503 and "Retry-After" not in gone.headers


@pytest.fixture
def probing_gateway(migrated: str, tmp_path: Path):
    env = make_env(migrated, tmp_path / "instance", **{**POOL_ENV, "PROBE_INTERVAL_SECONDS": "1",
                                                       "PROBE_TIMEOUT_SECONDS": "1"})
    reset_database(migrated)
    server = start_gateway(env, tmp_path / "gateway.log", workers=2)
    yield server
    server.stop()


def test_the_background_prober_runs_on_exactly_one_worker(probing_gateway, second_upstream, migrated):
    from tests.fixtures.admin_client import Admin

    second_upstream.reset()
    admin = Admin(probing_gateway.url)
    backend = admin.post("/backends", {"name": "alpha", "kind": "openai", "base_url": second_upstream.url + "/v1",
                                       "models": ["gpt-*"]})
    key = admin.post(f"/backends/{backend['id']}/keys", {"secret": secret("sick-fail500")})
    pool = Pool(probing_gateway, admin, [second_upstream], migrated)
    pool.sql("UPDATE upstream_keys SET state = 'unhealthy' WHERE id = :id", id=key["id"])

    time.sleep(4.5)

    probes = [r for r in second_upstream.requests() if r["path"] == "/v1/models"]
    assert 2 <= len(probes) <= 6, len(probes)  # ~1 per second; two probing workers would make ~9
    [(name, holder)] = pool.sql("SELECT name, holder FROM leases WHERE name = 'upstream-prober'")
    assert name == "upstream-prober" and holder
    row = next(k for k in admin.get("/upstream-keys")["items"] if k["id"] == key["id"])
    assert row["state"] == "unhealthy" and row["last_error"] == "probe answered 500"
    assert "probe round" not in probing_gateway.output() or "Traceback" not in probing_gateway.output()
