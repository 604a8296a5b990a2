"""/ready: 200 when the database and the rate-limit storage answer, 503 naming the one
that does not, within a short timeout."""
from __future__ import annotations

import time

from gateway import create_app
from tests.conftest import make_env
from tests.fixtures.gateway_server import free_port
from tests.fixtures.memcached import MemcachedServer


def test_ready_turns_503_naming_the_limiter_storage_when_memcached_stops(env):
    server = MemcachedServer(free_port())  # our own: stopping the session's would hurt other tests
    server.start()
    try:
        app = create_app(env={**env, "RATELIMIT_STORAGE_URI": server.uri})
        client = app.test_client()
        assert client.get("/ready").get_json() == {"status": "ready",
                                                   "checks": {"database": "ok", "limiter_storage": "ok"},
                                                   "warnings": []}
        server.stop()

        started = time.monotonic()
        response = client.get("/ready")

        assert time.monotonic() - started < 3
        assert response.status_code == 503
        assert response.get_json() == {"status": "unavailable",
                                       "checks": {"database": "ok", "limiter_storage": "failed: unreachable"},
                                       "warnings": []}
    finally:
        server.stop()


def test_ready_turns_503_naming_the_database_when_it_is_unreachable(tmp_path):
    closed = free_port()  # nothing listens here
    app = create_app(env=make_env(f"postgresql://keygate@127.0.0.1:{closed}/keygate", tmp_path / "instance"))

    response = app.test_client().get("/ready")

    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["limiter_storage"] == "ok"
    assert body["checks"]["database"] == "failed: OperationalError"


def test_health_still_answers_when_the_database_is_unreachable(tmp_path):
    app = create_app(env=make_env(f"postgresql://keygate@127.0.0.1:{free_port()}/keygate", tmp_path / "instance"))

    response = app.test_client().get("/health")

    assert response.status_code == 200
    assert response.get_json()["database"] == "unavailable"
