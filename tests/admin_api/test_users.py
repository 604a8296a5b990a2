from datetime import datetime

from gateway.extensions import db
from gateway.models import ApiKey, UsageCounter
from gateway.periods import period_bounds

from . import factories

USER_FIELDS = {"id", "name", "email", "status", "tier", "token_quota", "request_quota", "byte_quota",
               "quota_period", "reset_day", "ip_allowlist", "allowed_models", "allowed_backends", "notes",
               "created_at", "updated_at", "usage"}


def test_create_user_answers_every_contract_field_with_usage_so_far(api):
    response = api.post("/users", {
        "name": "Alice", "email": "alice@example.test", "tier": "pro", "token_quota": 5000,
        "request_quota": 100, "quota_period": "daily", "ip_allowlist": ["10.1.2.3/8", "192.0.2.7"],
        "allowed_models": ["gpt-4o", "claude-*"], "allowed_backends": ["openai"], "notes": "team lead\nberlin",
    })

    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == USER_FIELDS
    assert {k: body[k] for k in USER_FIELDS - {"id", "created_at", "updated_at", "usage"}} == {
        "name": "Alice", "email": "alice@example.test", "status": "active", "tier": "pro", "token_quota": 5000,
        "request_quota": 100, "byte_quota": None, "quota_period": "daily", "reset_day": 1,
        "ip_allowlist": ["10.0.0.0/8", "192.0.2.7/32"], "allowed_models": ["gpt-4o", "claude-*"],
        "allowed_backends": ["openai"], "notes": "team lead\nberlin",
    }
    usage = body["usage"]
    assert {k: usage[k] for k in ("tokens", "tokens_in", "tokens_out", "requests", "bytes")} == {
        "tokens": 0, "tokens_in": 0, "tokens_out": 0, "requests": 0, "bytes": 0}
    assert usage["period_start"].endswith("T00:00:00Z")
    assert api.get(f"/users/{body['id']}").get_json() == body


def test_new_user_takes_quota_defaults_from_its_tier(api):
    tier = factories.tier(api, default_token_quota=777, default_request_quota=9, default_quota_period="total")

    user = factories.user(api, tier=tier["name"])

    assert (user["token_quota"], user["request_quota"], user["quota_period"]) == (777, 9, "total")
    assert user["usage"]["period_start"] is None
    assert user["usage"]["period_end"] is None


def test_user_answer_includes_usage_of_the_current_period(api, app):
    user = factories.user(api, quota_period="monthly")
    with app.app_context():
        start, _ = period_bounds("monthly", 1, datetime.utcnow())
        db.session.add(UsageCounter(user_id=user["id"], period_start=start, tokens_in=120, tokens_out=30,
                                    requests=4, bytes=2048))
        db.session.add(UsageCounter(user_id=user["id"], period_start=datetime(2001, 1, 1), tokens_in=999))
        db.session.commit()

    usage = api.get(f"/users/{user['id']}").get_json()["usage"]

    assert {k: usage[k] for k in ("tokens", "tokens_in", "tokens_out", "requests", "bytes")} == {
        "tokens": 150, "tokens_in": 120, "tokens_out": 30, "requests": 4, "bytes": 2048}


def test_patch_user_updates_status_quota_and_tier(api):
    user = factories.user(api)

    response = api.patch(f"/users/{user['id']}", {"status": "suspended", "token_quota": None, "tier": "pro",
                                                  "reset_day": 15})

    assert response.status_code == 200
    body = response.get_json()
    assert (body["status"], body["token_quota"], body["tier"], body["reset_day"]) == ("suspended", None, "pro", 15)


def test_user_validation_errors_name_every_bad_field(api):
    response = api.post("/users", {"email": "not an email", "status": "deleted", "quota_period": "weekly",
                                   "reset_day": 29, "ip_allowlist": ["not-a-network"], "token_quota": -1,
                                   "request_quota": "ten"})

    assert response.status_code == 422
    assert set(response.get_json()["error"]["fields"]) == {
        "name", "email", "status", "quota_period", "reset_day", "ip_allowlist", "token_quota", "request_quota"}


def test_user_with_unknown_tier_is_rejected(api):
    response = api.post("/users", {"name": "bob", "tier": "gold"})

    assert response.status_code == 422
    assert response.get_json()["error"]["fields"] == {"tier": "no tier with that name"}
    assert api.get("/users").get_json()["total"] == 0


def test_unknown_user_fields_are_rejected_and_counters_never_written(api):
    rejected = api.post("/users", {"name": "bob", "requests": 5, "key_hash": "00" * 32})
    assert rejected.status_code == 422
    assert set(rejected.get_json()["error"]["fields"]) == {"requests", "key_hash"}

    user = factories.user(api)
    response = api.patch(f"/users/{user['id']}", {"tier_id": 2, "usage": {"tokens": 1}})
    assert response.status_code == 200
    assert response.get_json()["tier"] == "dev"
    assert response.get_json()["usage"]["tokens"] == 0


def test_a_body_that_is_not_a_json_object_is_refused(api, client, admin_headers):
    assert api.post("/users", ["name"]).status_code == 422
    response = client.post("/api/admin/users", data="{not json", headers=admin_headers,
                           content_type="application/json")
    assert response.status_code == 400


def test_user_list_pages_newest_first(api):
    ids = [factories.user(api)["id"] for _ in range(3)]

    first = api.get("/users", page_size=2).get_json()
    second = api.get("/users", page=2, page_size=2).get_json()

    assert ([u["id"] for u in first["items"]], first["total"], first["page"], first["page_size"]) == (
        [ids[2], ids[1]], 3, 1, 2)
    assert ([u["id"] for u in second["items"]], second["total"], second["page"]) == ([ids[0]], 3, 2)
    assert api.get("/users", page_size=500).get_json()["page_size"] == 500


def test_bad_pagination_values_answer_422_naming_the_parameter(api):
    for params, field in (({"page_size": 501}, "page_size"), ({"page_size": 0}, "page_size"),
                          ({"page": 0}, "page"), ({"page": "two"}, "page"), ({"page_size": "x"}, "page_size")):
        response = api.get("/users", **params)
        assert response.status_code == 422, params
        assert list(response.get_json()["error"]["fields"]) == [field]


def test_delete_is_a_soft_delete_that_revokes_every_key_including_a_rotating_one(api, app):
    user = factories.user(api)
    kept = factories.key(api, user["id"])
    rotated = factories.key(api, user["id"])
    api.post(f"/keys/{rotated['id']}/rotate", {"grace_seconds": 3600})

    response = api.delete(f"/users/{user['id']}")

    assert response.status_code == 200
    assert response.get_json()["status"] == "deleted"
    assert api.get(f"/users/{user['id']}").get_json()["status"] == "deleted"
    assert api.get("/users").get_json()["total"] == 0
    assert api.get("/users", status="deleted").get_json()["total"] == 1
    statuses = {k["id"]: k["status"] for k in api.get("/keys").get_json()["items"]}
    assert set(statuses.values()) == {"revoked"} and len(statuses) == 3
    with app.app_context():
        for key_id in (kept["id"], rotated["id"]):
            row = db.session.get(ApiKey, key_id)
            assert row.revoked_at is not None and row.revoked_at <= datetime.utcnow()
            assert row.grace_until is None
    assert api.get("/audit").get_json()["items"][0]["detail"] == {"revoked_keys": 3}


def test_deleted_user_cannot_be_edited_or_given_keys(api):
    user = factories.user(api)
    api.delete(f"/users/{user['id']}")

    assert api.patch(f"/users/{user['id']}", {"name": "x"}).status_code == 422
    assert api.post(f"/users/{user['id']}/keys", {}).status_code == 422


def test_unknown_user_id_answers_404(api):
    assert api.get("/users/4242").status_code == 404
    assert api.patch("/users/4242", {"name": "x"}).status_code == 404
    assert api.delete("/users/4242").status_code == 404
    assert api.post("/users/4242/keys", {}).status_code == 404


def test_user_changes_are_audited_without_notes(api):
    user = factories.user(api, notes="private")
    api.patch(f"/users/{user['id']}", {"status": "suspended"})

    items = api.get("/audit").get_json()["items"]

    assert [(a["action"], a["target_id"]) for a in items] == [("user.update", user["id"]),
                                                              ("user.create", user["id"])]
    assert items[0]["detail"] == {"status": "suspended"}
    assert "notes" not in items[1]["detail"]
