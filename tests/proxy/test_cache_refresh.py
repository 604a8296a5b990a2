"""CACHE_REFRESH_SECONDS: each worker re-reads the generation counters at most that
often (the worker that made a change at once), and remembers a "not blocked" answer of
the failed-auth throttle that long (a failure it records itself forgets it at once).

Everything real: gunicorn with gevent workers, the test database, the fake upstream,
memcached. Which worker served a request is read from the gateway's JSON log line for
its X-Request-ID (it carries the worker's pid). The rest of the suite runs with
CACHE_REFRESH_SECONDS=0 (tests/conftest.py); this module runs the default.

Timing is asserted from the rule itself, never from speed: a request sent
CACHE_REFRESH_SECONDS after a change's response reaches a worker whose last counter
read is older than that, so it must be answered from a read made after the change -
its own, or one in flight when it arrived (worker and test share CLOCK_MONOTONIC).
That bound is the interval itself (0.5 s), tighter than the one-second promise.
Where a test needs "still inside the interval" to prove anything, it checks that
precondition on the measured times and starts the scenario again if a slow machine
broke it, instead of asserting a stale answer it cannot guarantee.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

from gateway import create_app
from gateway.config import ConfigError, load_config
from gateway.proxy.pool import FAILURES_TO_UNHEALTHY
from gateway.proxy.snapshot import LOCAL_BUMP_WINDOW_SECONDS
from tests.conftest import ADMIN_TOKEN, make_env
from tests.fixtures.admin_client import Admin
from tests.fixtures.deployment import Deployment, deploy
from tests.fixtures.gateway_server import ROOT, GatewayServer, free_port, start_gateway
from tests.fixtures.memcached import MemcachedServer

INTERVAL = 0.5  # the default CACHE_REFRESH_SECONDS, which the two-worker gateway runs with
IN_PROCESS_INTERVAL = 1.0
ATTEMPTS = 3  # scenarios whose timing precondition a slow machine broke are started again
BURST, BURST_TRIALS = 16, 4
BAD_KEY = "sk-pro-" + "q" * 40
CHAT = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}
SETTINGS = {
    "IP_RPM": "100000", "GLOBAL_RPM": "1000000", "AUTH_FAILURES_PER_MINUTE": "3", "TRUSTED_PROXY_COUNT": "1",
    "UPSTREAM_CONNECT_TIMEOUT": "2", "UPSTREAM_READ_TIMEOUT": "5", "DISCONNECT_DRAIN_SECONDS": "1",
}
ADMIN = {"X-Admin-Key": ADMIN_TOKEN}

_addresses = itertools.count(1)


def fresh_address() -> str:
    """A client address no other request of the session used (TRUSTED_PROXY_COUNT=1), so
    the failed-auth throttle (3 per address) never bites where a test does not want it."""
    n = next(_addresses)
    return f"10.{200 + (n >> 16) % 50}.{(n >> 8) & 255}.{n & 255}"


# -- gateways -----------------------------------------------------------------------------

def _start(migrated: str, root: Path, storage: str, workers: int, **settings: str) -> GatewayServer:
    env = make_env(migrated, root / "instance", RATELIMIT_STORAGE_URI=storage, **SETTINGS, **settings)
    if "CACHE_REFRESH_SECONDS" not in settings:
        env.pop("CACHE_REFRESH_SECONDS")  # the default, not the suite's 0
    with pytest.MonkeyPatch.context() as patch:  # start_gateway passes the environment on
        patch.delenv("CACHE_REFRESH_SECONDS", raising=False)
        return start_gateway(env, root / "gateway.log", workers=workers)


@pytest.fixture(scope="module")
def two_workers(migrated: str, memcached: MemcachedServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """Two gevent workers, CACHE_REFRESH_SECONDS unset (its default, 0.5 s)."""
    server = _start(migrated, tmp_path_factory.mktemp("cache-refresh-two"), memcached.uri, workers=2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def one_worker(migrated: str, memcached: MemcachedServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    server = _start(migrated, tmp_path_factory.mktemp("cache-refresh-one"), memcached.uri, workers=1,
                    CACHE_REFRESH_SECONDS=str(INTERVAL))
    yield server
    server.stop()


def _deploy(gateway: GatewayServer, upstream: Any, migrated: str,
            memcached: MemcachedServer) -> Deployment:
    memcached.flush()
    deployment = deploy(gateway, upstream, migrated)
    # polls send hundreds of requests with one key: only the behaviour under test may refuse them
    tier = next(t for t in deployment.admin.get("/tiers")["items"] if t["name"] == "pro")
    deployment.admin.patch(f"/tiers/{tier['id']}", {"rpm": 1_000_000})
    return deployment


@pytest.fixture
def spread(two_workers: GatewayServer, fake_upstream: Any, migrated: str,
           memcached: MemcachedServer) -> Deployment:
    deployment = _deploy(two_workers, fake_upstream, migrated, memcached)
    # The worker that did not make the admin calls may still route with the previous
    # test's backends (the database was reset underneath it) until the interval has
    # passed; after it, each worker's next request re-reads the counters.
    time.sleep(INTERVAL + 0.05)
    return deployment


@pytest.fixture
def lone(one_worker: GatewayServer, fake_upstream: Any, migrated: str,
         memcached: MemcachedServer) -> Deployment:
    return _deploy(one_worker, fake_upstream, migrated, memcached)


# -- requests and the workers that served them ------------------------------------------------

@dataclass
class Answer:
    rid: str
    sent: float  # time.monotonic() just before sending
    received: float
    status: int
    code: str | None


def chat(url: str, key: str, address: str | None = None, http: Any = None) -> Answer:
    """One chat completion (a new connection each time unless ``http`` is a session)."""
    rid = "cr-" + uuid.uuid4().hex[:20]
    headers = {"Authorization": f"Bearer {key}", "X-Request-ID": rid, "X-Forwarded-For": address or fresh_address()}
    sent = time.monotonic()
    response = (http or requests).post(url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10)
    received = time.monotonic()
    code = None if response.status_code == 200 else response.json()["error"]["code"]
    return Answer(rid, sent, received, response.status_code, code)


def poll(url: str, key: str, until: float, address: str | None = None, threads: int = 4) -> list[Answer]:
    """Requests from ``threads`` clients in a row until ``until``; new connections, which
    the kernel hands to whichever worker accepts first, so both workers get some."""
    answers: list[Answer] = []

    def run() -> None:
        while time.monotonic() < until:
            answers.append(chat(url, key, address))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    return answers


def pids_of(gateway: GatewayServer, rids: list[str], timeout: float = 10.0) -> dict[str, int]:
    """The pid of the worker that served each request, from its log line (written when
    the request is recorded, which may be just after the client has its answer)."""
    wanted = set(rids)
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, int] = {}
        for line in gateway.output().splitlines():
            if '"request_id"' not in line or not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("request_id") in wanted and entry.get("event") == "request":
                found[entry["request_id"]] = entry["pid"]
        if len(found) == len(wanted) or time.monotonic() > deadline:
            assert len(found) == len(wanted), f"no log line for {sorted(wanted - set(found))[:5]}"
            return found
        time.sleep(0.05)


def warm_both_workers(deployment: Deployment, address: str | None = None) -> set[int]:
    """Serve the key (from ``address``) on both workers, so each has it cached and has
    just read the counters (the ``spread`` fixture waited out the interval); answers the
    two worker pids."""
    deadline = time.monotonic() + 10
    while True:
        answers = poll(deployment.url, deployment.key, time.monotonic() + 0.15, address)
        assert {(a.status, a.code) for a in answers} == {(200, None)}
        pids = set(pids_of(deployment.gateway, [a.rid for a in answers]).values())
        if len(pids) == 2:
            return pids
        assert time.monotonic() < deadline, "new connections never reached the second worker"


def assert_every_worker_applies_the_change_within_the_interval(
        deployment: Deployment, change: Callable[[dict[str, str]], requests.Response], status: int, code: str) -> None:
    """Make ``change`` through the admin API, poll both workers, and check that every
    request sent INTERVAL or more after the change's response - and every request the
    worker that made the change served - is answered ``status``/``code``."""
    workers = warm_both_workers(deployment)
    change_rid = "cr-change-" + uuid.uuid4().hex[:12]
    response = change({"X-Request-ID": change_rid})
    changed_at = time.monotonic()
    assert response.status_code == 200, response.text
    answers = poll(deployment.url, deployment.key, changed_at + INTERVAL + 0.3)
    pids = pids_of(deployment.gateway, [change_rid] + [a.rid for a in answers])
    late = [a for a in answers if a.sent >= changed_at + INTERVAL]
    while {pids[a.rid] for a in late} != workers and time.monotonic() < changed_at + 8:
        more = poll(deployment.url, deployment.key, time.monotonic() + 0.2)
        pids.update(pids_of(deployment.gateway, [a.rid for a in more]))
        answers += more
        late += more
    changer = pids[change_rid]
    assert changer in workers
    assert {pids[a.rid] for a in late} == workers, "both workers must answer after the interval"
    # (sent, answered) seconds after the change's response, by the changing worker?, status, code
    wrong = sorted((round(a.sent - changed_at, 3), round(a.received - changed_at, 3), pids[a.rid] == changer,
                    a.status, a.code) for a in late if (a.status, a.code) != (status, code))
    assert not wrong, wrong
    # the worker that made the change re-reads at once: never a stale answer there
    assert {(a.status, a.code) for a in answers if pids[a.rid] == changer} == {(status, code)}
    # the other worker may serve from its snapshot, but only inside the interval
    stale = [a for a in answers if a.status == 200]
    assert all(pids[a.rid] != changer and a.sent < changed_at + INTERVAL for a in stale)
    assert {(a.status, a.code) for a in answers} <= {(200, None), (status, code)}


# -- the default interval on two workers ----------------------------------------------------

def test_revoked_key_gets_401_on_every_worker_from_the_refresh_interval_on_and_at_once_on_the_revoking_worker(
        spread: Deployment):
    assert_every_worker_applies_the_change_within_the_interval(
        spread, lambda h: spread.admin.http.delete(f"{spread.admin.base}/keys/{spread.key_id}", headers=h, timeout=10),
        401, "invalid_api_key")


def test_suspended_user_gets_403_on_every_worker_from_the_refresh_interval_on_and_at_once_on_the_suspending_worker(
        spread: Deployment):
    assert_every_worker_applies_the_change_within_the_interval(
        spread, lambda h: spread.admin.http.patch(f"{spread.admin.base}/users/{spread.user_id}",
                                                  json={"status": "suspended"}, headers=h, timeout=10),
        403, "account_suspended")


def test_disabled_upstream_key_is_no_longer_used_by_any_worker_from_the_refresh_interval_on(spread: Deployment):
    [upstream_key] = spread.admin.get("/upstream-keys", backend_id=spread.openai_backend_id)["items"]
    assert_every_worker_applies_the_change_within_the_interval(
        spread, lambda h: spread.admin.http.patch(f"{spread.admin.base}/upstream-keys/{upstream_key['id']}",
                                                  json={"enabled": False}, headers=h, timeout=10),
        503, "no_healthy_upstream")


def test_a_worker_serves_a_change_made_by_another_process_from_its_snapshot_until_the_refresh_interval_has_passed(
        spread: Deployment, migrated: str):
    """The cache is really used at the default interval: on one worker (a kept-alive
    connection), a user suspended by another process is still served right after the
    worker's counter read, and refused once the interval has passed."""
    engine = create_engine(migrated)
    try:
        key, user_id = spread.key, spread.user_id
        for _ in range(ATTEMPTS):
            http = requests.Session()
            first = chat(spread.url, key, http=http)  # opens the window of this test's admin calls if they ran here
            time.sleep(LOCAL_BUMP_WINDOW_SECONDS + 0.1)  # and waits it out
            read = chat(spread.url, key, http=http)  # its last read is older than the interval: it reads now
            with engine.begin() as conn:  # what the admin API writes, from a process that is no worker
                conn.execute(text("UPDATE users SET status = 'suspended' WHERE id = :u"), {"u": user_id})
                conn.execute(text("UPDATE generations SET value = value + 1 WHERE name = 'auth'"))
            changed_at = time.monotonic()
            stale = chat(spread.url, key, http=http)
            time.sleep(max(0.0, changed_at + INTERVAL + 0.02 - time.monotonic()))
            fresh = chat(spread.url, key, http=http)
            http.close()
            answers = [first, read, stale, fresh]
            one_worker_only = len(set(pids_of(spread.gateway, [a.rid for a in answers]).values())) == 1
            if one_worker_only and stale.received - read.sent < INTERVAL:
                assert [(a.status, a.code) for a in answers] == [
                    (200, None), (200, None), (200, None), (403, "account_suspended")]
                return
            created = spread.admin.post("/keys", {"name": f"again-{uuid.uuid4().hex[:6]}", "tier": "pro"})
            key, user_id = created["key"], created["user_id"]
        pytest.fail("the kept-alive connection changed worker or the machine was too slow, every attempt")
    finally:
        engine.dispose()


def test_a_burst_arriving_while_the_worker_rereads_the_counters_is_refused_a_key_revoked_an_interval_ago(
        lone: Deployment, two_workers: GatewayServer):
    """The first request of a burst re-reads the counters (its worker's last read is
    older than the interval); the others arrive while that read is in flight and must
    not be served from the snapshot it is about to replace. Revoked through the admin
    API of another gateway process, so this worker has no local bump to go by."""
    other_process = Admin(two_workers.url)
    keys = [lone.admin.post("/keys", {"name": f"burst-{i}", "tier": "pro"}) for i in range(BURST_TRIALS)]
    for created in keys:  # cached by the worker; the first of these opens the window of the admin calls above
        assert chat(lone.url, created["key"]).status == 200
    time.sleep(LOCAL_BUMP_WINDOW_SECONDS + 0.1)  # past that window
    served = []
    for created in keys:
        assert chat(lone.url, created["key"]).status == 200
        other_process.delete(f"/keys/{created['id']}")
        time.sleep(INTERVAL + 0.1)
        barrier = threading.Barrier(BURST)
        results: list[int] = []

        def one(barrier: threading.Barrier, key: str, results: list[int]) -> None:
            barrier.wait()
            results.append(chat(lone.url, key).status)

        threads = [threading.Thread(target=one, args=(barrier, created["key"], results)) for _ in range(BURST)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        served.append(results.count(200))
    assert served == [0] * BURST_TRIALS, f"requests served with a key revoked {INTERVAL + 0.1} s before, per burst"


# -- in process: the changing worker at once, another process's change after the interval -----

@pytest.fixture
def in_process(env: dict[str, str], fake_upstream: Any) -> Iterator[tuple[Any, str]]:
    """An app with CACHE_REFRESH_SECONDS=1 and a backend on the fake upstream."""
    app = create_app(env={**env, "CACHE_REFRESH_SECONDS": str(IN_PROCESS_INTERVAL)})
    app.config["TESTING"] = True
    client = app.test_client()
    backend = client.post("/api/admin/backends", headers=ADMIN, json={
        "name": "fake-openai", "kind": "openai", "base_url": fake_upstream.url + "/v1", "models": ["gpt-*"]})
    assert backend.status_code == 201, backend.get_data(as_text=True)
    assert client.post(f"/api/admin/backends/{backend.get_json()['id']}/keys", headers=ADMIN,
                       json={"secret": "sk-upstream-refresh-0123456789"}).status_code == 201
    yield app, fake_upstream.url
    with app.app_context():
        from gateway.extensions import db

        db.session.remove()
        db.engine.dispose()


def _new_key(client: Any) -> tuple[str, int]:
    created = client.post("/api/admin/keys", headers=ADMIN, json={"name": f"r-{uuid.uuid4().hex[:6]}", "tier": "pro"})
    assert created.status_code == 201, created.get_data(as_text=True)
    return created.get_json()["key"], created.get_json()["id"]


def _chat_in_process(client: Any, key: str) -> Answer:
    sent = time.monotonic()
    response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=CHAT)
    response.get_data()  # run the relay to its end, so the request is recorded
    received = time.monotonic()
    code = None if response.status_code == 200 else response.get_json()["error"]["code"]
    return Answer("", sent, received, response.status_code, code)


def _read_counters_now(client: Any, key: str) -> Answer:
    """Serve ``key`` once, wait out the window opened by this process's admin calls, and
    serve it again: that request reads the counters (its last read is older than the
    interval), so the next one within the interval would not."""
    assert _chat_in_process(client, key).status == 200
    time.sleep(max(LOCAL_BUMP_WINDOW_SECONDS, IN_PROCESS_INTERVAL) + 0.1)
    read = _chat_in_process(client, key)
    assert read.status == 200
    return read


def test_in_process_the_worker_that_revokes_a_key_refuses_it_on_its_very_next_request(in_process):
    app, _ = in_process
    client = app.test_client()
    for _ in range(ATTEMPTS):
        key, key_id = _new_key(client)
        read = _read_counters_now(client, key)
        assert client.delete(f"/api/admin/keys/{key_id}", headers=ADMIN).status_code == 200
        after = _chat_in_process(client, key)
        if after.received - read.sent < IN_PROCESS_INTERVAL:  # within the interval: only the local bump re-reads
            assert (after.status, after.code) == (401, "invalid_api_key")
            return
    pytest.fail("the machine was too slow to stay within the interval, every attempt")


def test_in_process_a_revocation_by_another_process_is_not_seen_before_the_interval_and_is_seen_after_it(
        in_process, two_workers: GatewayServer):
    """The revocation is made through the admin API of the gunicorn gateway: another
    process, on the same database."""
    app, _ = in_process
    client = app.test_client()
    other_process = Admin(two_workers.url)
    for _ in range(ATTEMPTS):
        key, key_id = _new_key(client)
        read = _read_counters_now(client, key)
        other_process.delete(f"/keys/{key_id}")
        changed_at = time.monotonic()
        before = _chat_in_process(client, key)
        if before.received - read.sent >= IN_PROCESS_INTERVAL:
            continue  # too slow to prove anything: the worker was due to re-read anyway
        assert (before.status, before.code) == (200, None)  # served from this worker's snapshot
        time.sleep(max(0.0, changed_at + IN_PROCESS_INTERVAL + 0.02 - time.monotonic()))
        after = _chat_in_process(client, key)
        assert (after.status, after.code) == (401, "invalid_api_key")
        return
    pytest.fail("the machine was too slow to stay within the interval, every attempt")


# -- the failed-auth throttle's cached "not blocked" ---------------------------------------

def test_failed_auth_block_applies_at_once_on_the_worker_that_recorded_it_even_to_a_valid_key(lone: Deployment):
    for _ in range(ATTEMPTS):
        address = fresh_address()
        valid = chat(lone.url, lone.key, address)  # "not blocked" is now remembered for this address
        failures = [chat(lone.url, BAD_KEY, address) for _ in range(3)]
        valid_again = chat(lone.url, lone.key, address)
        guess_again = chat(lone.url, BAD_KEY, address)
        # the 3rd failure's throttle check remembered "not blocked" until its send + INTERVAL:
        # only forgetting it on the failure can refuse the valid key before then
        if valid_again.received - failures[-1].sent >= INTERVAL:
            continue
        assert (valid.status, valid.code) == (200, None)
        assert [(f.status, f.code) for f in failures] == [(401, "invalid_api_key")] * 3
        assert (valid_again.status, valid_again.code) == (429, "auth_rate_limited")
        assert (guess_again.status, guess_again.code) == (429, "auth_rate_limited")
        assert chat(lone.url, lone.key).status == 200  # another address is not blocked
        return
    pytest.fail("the machine was too slow to stay within the interval, every attempt")


def test_failed_auth_block_reaches_every_worker_within_the_refresh_interval(spread: Deployment):
    address = fresh_address()
    workers = warm_both_workers(spread, address)  # both workers remember "not blocked" for it
    failures = [chat(spread.url, BAD_KEY, address) for _ in range(3)]
    blocked_at = time.monotonic()
    assert [(f.status, f.code) for f in failures] == [(401, "invalid_api_key")] * 3
    answers = poll(spread.url, spread.key, blocked_at + INTERVAL + 0.3, address)
    pids = pids_of(spread.gateway, [a.rid for a in answers])
    late = [a for a in answers if a.sent >= blocked_at + INTERVAL]
    while {pids[a.rid] for a in late} != workers and time.monotonic() < blocked_at + 8:
        more = poll(spread.url, spread.key, time.monotonic() + 0.2, address)
        pids.update(pids_of(spread.gateway, [a.rid for a in more]))
        answers += more
        late += more
    assert {pids[a.rid] for a in late} == workers
    assert {(a.status, a.code) for a in late} == {(429, "auth_rate_limited")}
    assert all(a.sent < blocked_at + INTERVAL for a in answers if a.status == 200)


# -- a client header value requests refuses to send ------------------------------------------

def test_header_value_that_cannot_be_forwarded_gets_400_in_the_callers_format_and_leaves_the_upstream_key_healthy(
        spread: Deployment):
    """gunicorn strips leading spaces/tabs and refuses control characters, but lets
    obs-text through: a leading NBSP (0xA0) or NEL (0x85) arrives as Unicode whitespace,
    which requests refuses to put in a header."""
    message = "A request header has a value that cannot be forwarded"
    for _ in range(FAILURES_TO_UNHEALTHY + 1):  # more than it takes to mark a key unhealthy
        openai = requests.post(spread.url + "/v1/chat/completions", json=CHAT, timeout=10, headers={
            "Authorization": f"Bearer {spread.key}", "Accept": b"\xa0application/json",
            "X-Forwarded-For": fresh_address()})
        assert openai.status_code == 400, openai.text
        assert openai.json() == {"error": {"message": message, "type": "invalid_request_error",
                                           "code": "invalid_header", "param": None}}
        anthropic = requests.post(spread.url + "/v1/messages", timeout=10, headers={
            "x-api-key": spread.key, "anthropic-version": b"\x852023-06-01", "X-Forwarded-For": fresh_address()},
            json={"model": "claude-3-5-haiku", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
        assert anthropic.status_code == 400, anthropic.text
        assert anthropic.json() == {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    assert spread.upstream.stats()["total"] == 0  # nothing was sent upstream
    for backend_id in (spread.openai_backend_id, spread.anthropic_backend_id):
        [key] = spread.admin.get("/upstream-keys", backend_id=backend_id)["items"]
        assert (key["state"], key["consecutive_failures"], key["failures"], key["last_error"]) == (
            "healthy", 0, 0, None)
    assert chat(spread.url, spread.key).status == 200


# -- configuration --------------------------------------------------------------------------

def test_cache_refresh_defaults_to_half_a_second_and_accepts_zero_and_one_second(tmp_path):
    env = make_env(f"sqlite:///{tmp_path / 'config.db'}", tmp_path / "instance")
    del env["CACHE_REFRESH_SECONDS"]
    assert load_config(env, check_database=False)["CACHE_REFRESH_SECONDS"] == 0.5
    for value in ("0", "1"):
        assert load_config({**env, "CACHE_REFRESH_SECONDS": value}, check_database=False)[
            "CACHE_REFRESH_SECONDS"] == float(value)


@pytest.mark.parametrize("value", ["1.5", "-1", "nan"])
def test_cache_refresh_outside_zero_to_one_second_is_a_config_error(tmp_path, value):
    env = make_env(f"sqlite:///{tmp_path / 'config.db'}", tmp_path / "instance", CACHE_REFRESH_SECONDS=value)
    with pytest.raises(ConfigError, match="^CACHE_REFRESH_SECONDS must be between 0 and 1$"):
        load_config(env, check_database=False)


@pytest.mark.parametrize("value", ["1.5", "-1"])
def test_gunicorn_refuses_to_start_with_cache_refresh_outside_zero_to_one_second(tmp_path, value):
    env = make_env(f"sqlite:///{tmp_path / 'config.db'}", tmp_path / "instance", CACHE_REFRESH_SECONDS=value)
    env.update({"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GATEWAY_BIND": f"127.0.0.1:{free_port()}",
                "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "PYTHONUNBUFFERED": "1"})
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
        pytest.fail(f"gunicorn started with CACHE_REFRESH_SECONDS={value}:\n{stderr[-2000:]}")
    assert process.returncode == 1, stderr
    assert "keygate: configuration error: CACHE_REFRESH_SECONDS must be between 0 and 1" in stderr.splitlines()
    assert "Booting worker" not in stderr
