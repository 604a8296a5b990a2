"""``GET /api/usage`` and the ``/usage`` page."""
from __future__ import annotations

from datetime import timedelta

from flask import Flask

from gateway.extensions import db
from gateway.models import ApiKey, User
from gateway.services import keys as key_service
from gateway.timeutil import utcnow
from gateway.transaction import committed


def _usage(client, plaintext: str):
    return client.get("/api/usage", headers={"Authorization": f"Bearer {plaintext}"})


def test_active_key_reports_quota_usage_and_breakdown(client, make_user, make_key, add_usage):
    user_id = make_user("Dana", tier="pro", token_quota=1000, quota_period="monthly", reset_day=1)
    key_id, plaintext = make_key(user_id, label="laptop")
    add_usage(user_id, 200, 50, model="gpt-a", requests=2, key_id=key_id)
    add_usage(user_id, 100, 0, model="gpt-b", key_id=key_id)
    response = _usage(client, plaintext)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    data = response.get_json()
    assert (data["owner"], data["tier"], data["status"], data["label"]) == ("Dana", "pro", "active", "laptop")
    assert (data["quota"], data["used"], data["remaining"], data["percent"]) == (1000, 350, 650, 35.0)
    assert data["requests"] == 3 and data["rpm_limit"] == 120 and data["period"] == "monthly"
    assert data["period_end"].endswith("-01T00:00:00Z")
    assert data["key"].endswith(plaintext[-4:]) and plaintext not in str(data)
    assert data["models"] == [
        {"model": "gpt-a", "requests": 2, "tokens_in": 200, "tokens_out": 50, "tokens": 250},
        {"model": "gpt-b", "requests": 1, "tokens_in": 100, "tokens_out": 0, "tokens": 100}]
    assert len(data["daily"]) == 14 and data["daily"][-1] == {"date": utcnow().date().isoformat(),
                                                            "requests": 3, "tokens": 350}


def test_key_is_accepted_in_every_documented_place(client, make_user, make_key):
    _key_id, plaintext = make_key(make_user("Dana"))
    for headers, query in (({"x-api-key": plaintext}, ""), ({"X-API-Key": plaintext}, ""),
                           ({"Authorization": f"bearer {plaintext}"}, ""), ({}, f"?key={plaintext}")):
        response = client.get(f"/api/usage{query}", headers=headers)
        assert response.status_code == 200 and response.get_json()["owner"] == "Dana"


def test_exhausted_when_the_token_quota_is_used_up(client, make_user, make_key, add_usage):
    user_id = make_user("Dana", token_quota=500, quota_period="daily")
    _key_id, plaintext = make_key(user_id)
    add_usage(user_id, 400, 100)
    data = _usage(client, plaintext).get_json()
    assert (data["status"], data["remaining"], data["percent"]) == ("exhausted", 0, 100.0)


def test_exhausted_when_the_request_quota_is_used_up(client, make_user, make_key, add_usage):
    user_id = make_user("Dana", request_quota=2)
    _key_id, plaintext = make_key(user_id)
    add_usage(user_id, 1, 1, requests=2)
    data = _usage(client, plaintext).get_json()
    assert data["status"] == "exhausted" and data["quota"] is None and data["percent"] is None


def test_revoked_expired_and_suspended(app: Flask, client, make_user, make_key):
    revoked_user, expired_user, suspended_user = make_user("R"), make_user("E"), make_user("S", status="suspended")
    revoked_id, revoked = make_key(revoked_user)
    expired_id, expired = make_key(expired_user, expires_at=(utcnow() + timedelta(hours=1)).isoformat())
    _sid, suspended = make_key(suspended_user)
    with app.app_context():
        key_service.revoke(db.session.get(ApiKey, revoked_id), "test", None)
        db.session.get(ApiKey, expired_id).expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    assert _usage(client, revoked).get_json()["status"] == "revoked"
    assert _usage(client, expired).get_json()["status"] == "expired"
    assert _usage(client, suspended).get_json()["status"] == "suspended"


def test_a_key_in_its_rotation_grace_still_reads_active(app: Flask, client, make_user, make_key):
    key_id, plaintext = make_key(make_user("Dana"))
    with app.app_context(), committed():
        key_service.rotate(db.session.get(ApiKey, key_id), {"grace_seconds": 600}, "test", None)
    data = _usage(client, plaintext).get_json()
    assert data["status"] == "active" and data["grace_until"] is not None


def test_deleted_user_key_reads_revoked(app: Flask, client, make_user, make_key):
    user_id = make_user("Dana")
    _key_id, plaintext = make_key(user_id)
    from gateway.services import users

    with app.app_context(), committed():
        users.delete(db.session.get(User, user_id), "test", None)
    assert _usage(client, plaintext).get_json()["status"] == "revoked"


def test_unknown_malformed_and_missing_keys_get_the_identical_401(client, make_user, make_key):
    _key_id, plaintext = make_key(make_user("Dana"))
    answers = [
        client.get("/api/usage", headers={"Authorization": "Bearer sk-dev-" + "x" * 40}),
        client.get("/api/usage", headers={"Authorization": "Bearer " + plaintext[:-1]}),
        client.get("/api/usage", headers={"Authorization": "Bearer not a key at all"}),
        client.get("/api/usage", headers={"x-api-key": "ü" * 10}),
        client.get("/api/usage", headers={"x-api-key": "k" * 5000}),
        client.get("/api/usage", headers={"Authorization": "Basic Zm9vOmJhcg=="}),
        client.get("/api/usage"),
    ]
    bodies = {answer.get_data() for answer in answers}
    assert {answer.status_code for answer in answers} == {401}
    assert len(bodies) == 1
    assert all(answer.headers["Cache-Control"] == "no-store" for answer in answers)


def test_usage_api_is_throttled_per_address(client, make_user, make_key):
    _key_id, plaintext = make_key(make_user("Dana"))
    statuses = [_usage(client, plaintext).status_code for _ in range(61)]
    assert statuses[:60] == [200] * 60 and statuses[60] == 429
    unknown = client.get("/api/usage", headers={"x-api-key": "sk-dev-guess"})
    assert unknown.status_code == 429  # guessing keys is throttled too
    other = client.get("/api/usage", headers={"x-api-key": plaintext}, environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert other.status_code == 200


def test_usage_page_sends_the_key_in_a_header_and_never_stores_it(client):
    response = client.get("/usage")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    assert 'method="post"' in html and 'type="password"' in html and "/static/usage.js" in html
    script = client.get("/static/usage.js").get_data(as_text=True)
    script = script[script.index("*/") + 2:]  # the header comment names what the code must not do
    assert '"Authorization": "Bearer " + key' in script
    for forbidden in ("localStorage", "sessionStorage", "document.cookie", "?key=", "innerHTML"):
        assert forbidden not in script
