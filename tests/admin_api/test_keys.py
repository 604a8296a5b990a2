import hashlib
import hmac
import logging
import re
import time
from datetime import datetime, timedelta

from sqlalchemy import select, text

from gateway.extensions import db
from gateway.models import ApiKey, User
from gateway.secrets_box import hash_user_key
from tests.conftest import PEPPER

from . import factories

KEY_FIELDS = {"id", "user_id", "owner", "label", "prefix", "last4", "masked", "status", "created_at",
              "last_used_at", "expires_at", "revoked_at", "grace_until", "rotated_from_id", "ip_allowlist",
              "allowed_models", "allowed_backends", "requests", "tokens_in", "tokens_out"}


def test_create_key_answers_the_full_key_once_plus_the_masked_key_object(api):
    user = factories.user(api, name="alice", tier="pro")

    response = api.post(f"/users/{user['id']}/keys", {"label": "laptop", "expires_at": "2099-01-01T00:00:00Z"})

    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == KEY_FIELDS | {"key"}
    key = body["key"]
    assert re.fullmatch(r"sk-pro-[A-Za-z0-9_-]{32,}", key)
    assert {k: body[k] for k in ("user_id", "owner", "label", "prefix", "last4", "masked", "status",
                                 "expires_at", "revoked_at", "last_used_at", "rotated_from_id", "requests")} == {
        "user_id": user["id"], "owner": "alice", "label": "laptop", "prefix": key[:11], "last4": key[-4:],
        "masked": f"{key[:11]}****{key[-4:]}", "status": "active", "expires_at": "2099-01-01T00:00:00Z",
        "revoked_at": None, "last_used_at": None, "rotated_from_id": None, "requests": 0,
    }
    detail = api.get(f"/keys/{body['id']}").get_json()
    assert detail == {k: v for k, v in body.items() if k != "key"}


def test_each_key_is_new_random_material(api):
    user = factories.user(api)

    keys = {factories.key(api, user["id"])["key"] for _ in range(5)}

    assert len(keys) == 5


def test_shortcut_creates_a_user_with_a_total_token_quota_and_its_first_key(api):
    response = api.post("/keys", {"name": "bob", "tier": "pro", "total_tokens": 1000})

    assert response.status_code == 201
    body = response.get_json()
    assert body["key"].startswith("sk-pro-")
    assert (body["owner"], body["status"]) == ("bob", "active")
    owner = api.get(f"/users/{body['user_id']}").get_json()
    assert (owner["name"], owner["tier"], owner["token_quota"], owner["quota_period"]) == ("bob", "pro", 1000, "total")


def test_shortcut_defaults_to_the_dev_tier_and_accepts_an_expiry(api):
    response = api.post("/keys", {"name": "carol", "expires_at": "2099-05-01T10:00:00Z", "label": "ci"})

    assert response.status_code == 201
    body = response.get_json()
    assert body["key"].startswith("sk-dev-")
    assert (body["expires_at"], body["label"]) == ("2099-05-01T10:00:00Z", "ci")


def test_shortcut_with_bad_input_answers_422_and_creates_no_user(api):
    cases = [({"tier": "dev"}, {"name"}), ({"name": "x", "tier": "gold"}, {"tier"}),
             ({"name": "x", "total_tokens": -5}, {"total_tokens"}),
             ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, {"expires_at"}),
             ({"name": "x", "key_hash": "ab" * 32}, {"key_hash"})]
    for body, fields in cases:
        response = api.post("/keys", body)
        assert response.status_code == 422, body
        assert set(response.get_json()["error"]["fields"]) == fields, body

    assert api.get("/users").get_json()["total"] == 0


def test_key_list_is_masked_newest_first_and_filterable_by_user(api):
    alice, bob = factories.user(api), factories.user(api)
    first = factories.key(api, alice["id"])
    second = factories.key(api, bob["id"])

    listed = api.get("/keys").get_json()
    only_alice = api.get("/keys", user_id=alice["id"]).get_json()

    assert [k["id"] for k in listed["items"]] == [second["id"], first["id"]]
    assert (listed["total"], listed["page"], listed["page_size"]) == (2, 1, 50)
    assert all("key" not in item for item in listed["items"])
    assert [k["masked"] for k in listed["items"]] == [second["masked"], first["masked"]]
    assert [k["id"] for k in only_alice["items"]] == [first["id"]]


def test_patch_key_changes_label_expiry_and_allowlist(api):
    key = factories.key(api, factories.user(api)["id"])

    response = api.patch(f"/keys/{key['id']}", {"label": "desktop", "ip_allowlist": ["198.51.100.0/24"],
                                                "expires_at": "2098-02-03T04:05:06+01:00"})

    assert response.status_code == 200
    body = response.get_json()
    assert (body["label"], body["ip_allowlist"], body["expires_at"]) == (
        "desktop", ["198.51.100.0/24"], "2098-02-03T03:05:06Z")


def test_key_body_cannot_write_the_hash_or_the_counters(api, app):
    key = factories.key(api, factories.user(api)["id"])

    rejected = api.patch(f"/keys/{key['id']}", {"key_hash": "00" * 32, "requests": 99, "tokens_in": 5})
    ignored = api.patch(f"/keys/{key['id']}", {"status": "active", "user_id": 12345, "last4": "zzzz"})

    assert rejected.status_code == 422
    assert set(rejected.get_json()["error"]["fields"]) == {"key_hash", "requests", "tokens_in"}
    assert ignored.status_code == 200
    with app.app_context():
        row = db.session.get(ApiKey, key["id"])
        assert (row.key_hash, row.requests, row.tokens_in, row.user_id, row.last4) == (
            hash_user_key(key["key"], PEPPER), 0, 0, key["user_id"], key["key"][-4:])


def test_delete_revokes_the_key_and_keeps_it_listed(api):
    key = factories.key(api, factories.user(api)["id"])

    response = api.delete(f"/keys/{key['id']}")

    assert response.status_code == 200
    assert response.get_json()["status"] == "revoked"
    assert response.get_json()["revoked_at"] is not None
    assert api.get(f"/keys/{key['id']}").get_json()["status"] == "revoked"
    assert api.post(f"/keys/{key['id']}/rotate", {}).status_code == 422


def test_rotation_issues_a_new_key_and_keeps_the_old_one_rotating_until_grace_ends(api):
    old = factories.key(api, factories.user(api, name="dana")["id"], label="server")

    before = datetime.utcnow().replace(microsecond=0)
    response = api.post(f"/keys/{old['id']}/rotate", {"grace_seconds": 1})

    assert response.status_code == 201
    new = response.get_json()
    assert new["key"] != old["key"] and new["key"].startswith("sk-dev-")
    assert (new["user_id"], new["owner"], new["label"], new["rotated_from_id"], new["status"]) == (
        old["user_id"], "dana", "server", old["id"], "active")
    listed = {k["id"]: k for k in api.get("/keys").get_json()["items"]}
    assert set(listed) == {old["id"], new["id"]}
    assert listed[old["id"]]["status"] == "rotating"
    grace_until = datetime.fromisoformat(listed[old["id"]]["grace_until"].rstrip("Z"))
    assert before <= grace_until <= before + timedelta(seconds=2)

    time.sleep(2.1)

    assert api.get(f"/keys/{old['id']}").get_json()["status"] == "revoked"
    assert api.get(f"/keys/{new['id']}").get_json()["status"] == "active"


def test_rotating_a_rotating_key_again_never_extends_its_grace(api):
    old = factories.key(api, factories.user(api)["id"])
    api.post(f"/keys/{old['id']}/rotate", {"grace_seconds": 60})
    first_grace = api.get(f"/keys/{old['id']}").get_json()["grace_until"]

    again = api.post(f"/keys/{old['id']}/rotate", {"grace_seconds": 86400})

    assert again.status_code == 201
    assert api.get(f"/keys/{old['id']}").get_json()["grace_until"] == first_grace
    assert api.get(f"/keys/{old['id']}").get_json()["status"] == "rotating"


def test_rotation_validates_grace_seconds(api):
    key = factories.key(api, factories.user(api)["id"])

    response = api.post(f"/keys/{key['id']}/rotate", {"grace_seconds": -1})

    assert response.status_code == 422
    assert list(response.get_json()["error"]["fields"]) == ["grace_seconds"]


def test_revoking_a_rotating_key_ends_its_grace_at_once(api):
    old = factories.key(api, factories.user(api)["id"])
    api.post(f"/keys/{old['id']}/rotate", {"grace_seconds": 3600})

    response = api.delete(f"/keys/{old['id']}")

    assert response.get_json()["status"] == "revoked"
    assert response.get_json()["grace_until"] is None


def test_unknown_key_id_answers_404(api):
    assert api.get("/keys/777").status_code == 404
    assert api.patch("/keys/777", {"label": "x"}).status_code == 404
    assert api.delete("/keys/777").status_code == 404
    assert api.post("/keys/777/rotate", {}).status_code == 404


def test_database_holds_only_the_peppered_hmac_of_a_key(api, app):
    key = factories.key(api, factories.user(api)["id"])
    plaintext = key["key"]

    with app.app_context():
        row = db.session.execute(text("SELECT key_hash, prefix, last4 FROM api_keys WHERE id = :id"),
                                 {"id": key["id"]}).one()
        dumped = [str(v) for table in ("api_keys", "users", "audit_log")
                  for r in db.session.execute(text(f"SELECT * FROM {table}")).all() for v in r]

    expected = hmac.new(PEPPER.encode(), plaintext.encode(), hashlib.sha256).hexdigest()
    assert row.key_hash == expected
    assert (row.prefix, row.last4) == (plaintext[:11], plaintext[-4:])
    assert not any(plaintext in value for value in dumped)


def test_changing_the_pepper_makes_every_key_unfindable(api, env):
    from gateway import create_app

    plaintext = factories.key(api, factories.user(api)["id"])["key"]
    other = create_app(env={**env, "KEY_PEPPER": "a-completely-different-pepper"})

    with other.app_context():
        digest = hash_user_key(plaintext, other.config["KEY_PEPPER"])
        assert db.session.scalar(select(ApiKey).where(ApiKey.key_hash == digest)) is None
        assert db.session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_user_key(plaintext, PEPPER)))
        db.session.remove()
        db.engine.dispose()


def test_full_key_appears_in_no_answer_audit_or_log_output(api, app, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    user = factories.user(api)
    created = factories.key(api, user["id"])
    rotated = api.post(f"/keys/{created['id']}/rotate", {"grace_seconds": 60}).get_json()
    shortcut = api.post("/keys", {"name": "erin", "total_tokens": 10}).get_json()
    secrets = [created["key"], rotated["key"], shortcut["key"]]
    api.patch(f"/keys/{created['id']}", {"label": "renamed"})
    api.delete(f"/keys/{rotated['id']}")
    factories.request_log(app, user_id=user["id"], key_id=created["id"], model="gpt-4o")

    answers = [api.get(path) for path in (
        "/keys", f"/keys/{created['id']}", f"/keys/{rotated['id']}", f"/keys/{shortcut['id']}",
        f"/users/{user['id']}/keys", "/users", f"/users/{user['id']}", "/audit", "/logs",
        "/usage?group_by=user", "/usage?group_by=day")]

    assert all(a.status_code == 200 for a in answers)
    out, err = capfd.readouterr()
    texts = [a.get_data(as_text=True) for a in answers] + [caplog.text, out, err]
    for secret in secrets:
        assert not any(secret in t for t in texts)
        assert not any(secret[len("sk-dev-"):] in t for t in texts)
    with app.app_context():
        assert db.session.scalar(select(User.id).where(User.name == "erin")) == shortcut["user_id"]


def test_creating_a_key_without_a_body_uses_the_defaults(client, admin_headers):
    user = client.post("/api/admin/users", json={"name": "no-body"}, headers=admin_headers).get_json()
    created = client.post(f"/api/admin/users/{user['id']}/keys", headers=admin_headers)
    assert created.status_code == 201
    assert created.get_json()["key"].startswith("sk-dev-") and created.get_json()["label"] == ""
    garbage = client.post(f"/api/admin/users/{user['id']}/keys", data=b"{nope", headers=admin_headers)
    assert garbage.status_code == 400
