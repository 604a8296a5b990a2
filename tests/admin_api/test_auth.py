import logging

import pytest

from gateway import create_app
from tests.conftest import ADMIN_TOKEN

SECOND_TOKEN = "second-admin-token-abcdefghijkl"
UNAUTHORIZED = {"error": {"code": "unauthorized",
                          "message": "A valid admin token is required (X-Admin-Key or Authorization: Bearer)"}}


def test_missing_token_answers_401(client):
    response = client.get("/api/admin/tiers")

    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED


@pytest.mark.parametrize("headers", [
    {"X-Admin-Key": "wrong-token-0123456789"},
    {"Authorization": "Bearer wrong-token-0123456789"},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"X-Admin-Key": ADMIN_TOKEN[:-1]},
    {"X-Admin-Key": ADMIN_TOKEN + "x"},
])
def test_wrong_token_answers_401(client, headers):
    response = client.get("/api/admin/tiers", headers=headers)

    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED


@pytest.mark.parametrize("headers", [
    {"X-Admin-Key": ADMIN_TOKEN},
    {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    {"Authorization": f"bearer {ADMIN_TOKEN}"},
])
def test_both_header_forms_authenticate(client, headers):
    assert client.get("/api/admin/tiers", headers=headers).status_code == 200


def test_writes_without_a_token_change_nothing(client, admin_headers):
    response = client.post("/api/admin/tiers", json={"name": "team", "key_prefix": "sk-team-"})

    assert response.status_code == 401
    assert client.get("/api/admin/tiers", headers=admin_headers).get_json()["total"] == 2


@pytest.fixture
def two_token_client(env):
    app = create_app(env={**env, "ADMIN_API_TOKEN": f"{ADMIN_TOKEN},{SECOND_TOKEN}"})
    yield app.test_client()
    with app.app_context():
        from gateway.extensions import db

        db.session.remove()
        db.engine.dispose()


def test_every_configured_token_works_and_the_audit_names_which(two_token_client):
    client = two_token_client
    client.post("/api/admin/users", json={"name": "a"}, headers={"X-Admin-Key": ADMIN_TOKEN})
    client.post("/api/admin/users", json={"name": "b"}, headers={"Authorization": f"Bearer {SECOND_TOKEN}"})

    audit = client.get("/api/admin/audit", headers={"X-Admin-Key": SECOND_TOKEN}).get_json()["items"]

    assert [entry["actor"] for entry in audit] == ["api-token-2", "api-token-1"]
    assert client.get("/api/admin/audit", headers={"X-Admin-Key": "third-token-00000000"}).status_code == 401


def test_no_token_configured_locks_the_api(env):
    app = create_app(env={k: v for k, v in env.items() if k != "ADMIN_API_TOKEN"})

    response = app.test_client().get("/api/admin/tiers", headers={"X-Admin-Key": ""})

    assert response.status_code == 401


@pytest.fixture
def throttled_app(env):
    app = create_app(env={**env, "ADMIN_AUTH_FAILURES_PER_MINUTE": "3"})
    yield app
    with app.app_context():
        from gateway.extensions import db

        db.session.remove()
        db.engine.dispose()


def test_repeated_auth_failures_from_one_address_answer_429_with_retry_after(throttled_app):
    client = throttled_app.test_client()
    bad = {"X-Admin-Key": "guess-0000000000000000"}

    statuses = [client.get("/api/admin/tiers", headers=bad).status_code for _ in range(3)]
    blocked = client.get("/api/admin/tiers", headers=bad)
    blocked_good_token = client.get("/api/admin/tiers", headers={"X-Admin-Key": ADMIN_TOKEN})

    assert statuses == [401, 401, 401]
    assert blocked.status_code == 429
    assert blocked.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 61
    assert blocked_good_token.status_code == 429


def test_auth_throttle_is_per_client_address(throttled_app):
    client = throttled_app.test_client()
    for _ in range(4):
        client.get("/api/admin/tiers", environ_base={"REMOTE_ADDR": "203.0.113.9"})

    other = client.get("/api/admin/tiers", headers={"X-Admin-Key": ADMIN_TOKEN},
                       environ_base={"REMOTE_ADDR": "203.0.113.10"})
    attacker = client.get("/api/admin/tiers", headers={"X-Admin-Key": ADMIN_TOKEN},
                          environ_base={"REMOTE_ADDR": "203.0.113.9"})

    assert other.status_code == 200
    assert attacker.status_code == 429


def test_successful_requests_do_not_count_as_failures(throttled_app):
    client = throttled_app.test_client()

    statuses = [client.get("/api/admin/tiers", headers={"X-Admin-Key": ADMIN_TOKEN}).status_code for _ in range(6)]

    assert statuses == [200] * 6


def test_a_token_lockout_is_logged_once_as_a_security_event(throttled_app, caplog):
    caplog.set_level(logging.WARNING, logger="gateway.security")
    client = throttled_app.test_client()
    bad = {"X-Admin-Key": "guess-0000000000000000"}
    for _ in range(6):  # 3 failures lock the address; 3 more are refused during the lockout
        client.get("/api/admin/tiers", headers=bad, environ_base={"REMOTE_ADDR": "203.0.113.9"})

    audit = client.get("/api/admin/audit?action=admin_api.auth_locked", headers={"X-Admin-Key": ADMIN_TOKEN})
    items = audit.get_json()["items"]
    assert [(i["actor"], i["ip"], i["detail"]["scope"]) for i in items] == [("security", "203.0.113.9", "address")]
    assert "guess-0000000000000000" not in audit.get_data(as_text=True)
    events = [r.fields for r in caplog.records if r.name == "gateway.security"]
    assert [(e["event"], e["client_ip"]) for e in events] == [("admin_api_auth_locked", "203.0.113.9")]
