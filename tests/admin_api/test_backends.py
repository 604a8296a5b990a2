from cryptography.fernet import Fernet
from sqlalchemy import text

from gateway.extensions import db
from gateway.models import UpstreamKey
from tests.conftest import ENCRYPTION_KEY

from . import factories

SECRET = "sk-upstream-9f8e7d6c5b4a3210-WXYZ"
BACKEND_FIELDS = {"id", "name", "kind", "base_url", "weight", "models", "model_aliases", "prices", "enabled",
                  "connect_timeout", "read_timeout", "health_check_path", "created_at", "key_count", "key_states",
                  "relay_cookies"}
UPSTREAM_KEY_FIELDS = {"id", "backend_id", "backend", "label", "masked", "last4", "weight", "enabled", "state",
                       "cooldown_until", "consecutive_failures", "last_error", "last_error_at", "state_changed_at",
                       "last_used_at", "requests", "failures", "tokens_in", "tokens_out", "created_at"}


def test_create_backend_answers_every_contract_field(api):
    response = api.post("/backends", {
        "name": "openai-main", "kind": "openai", "base_url": "https://api.example.test/v1/", "weight": 3,
        "models": ["gpt-4o", "gpt-4o-*"], "model_aliases": {"fast": "gpt-4o-mini"}, "enabled": True,
        "connect_timeout": 2, "read_timeout": 90.5, "health_check_path": "/models",
    })

    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == BACKEND_FIELDS
    assert {k: v for k, v in body.items() if k not in ("id", "created_at")} == {
        "name": "openai-main", "kind": "openai", "base_url": "https://api.example.test/v1", "weight": 3,
        "models": ["gpt-4o", "gpt-4o-*"], "model_aliases": {"fast": "gpt-4o-mini"}, "prices": {},
        "enabled": True, "connect_timeout": 2.0, "read_timeout": 90.5, "health_check_path": "/models",
        "key_count": 0, "key_states": {}, "relay_cookies": False,
    }
    assert api.get(f"/backends/{body['id']}").get_json() == body


def test_relay_cookies_is_off_by_default_settable_on_http_backends_only(api):
    http = api.post("/backends", {"name": "files", "kind": "http", "base_url": "https://files.example.test",
                                  "relay_cookies": True})
    assert http.status_code == 201 and http.get_json()["relay_cookies"] is True
    off = api.patch(f"/backends/{http.get_json()['id']}", {"relay_cookies": False})
    assert off.status_code == 200 and off.get_json()["relay_cookies"] is False

    llm = api.post("/backends", {"name": "llm", "kind": "openai", "base_url": "https://api.example.test/v1",
                                 "relay_cookies": True})
    assert llm.status_code == 422 and "relay_cookies" in llm.get_json()["error"]["fields"]
    made = api.post("/backends", {"name": "llm", "kind": "openai", "base_url": "https://api.example.test/v1"})
    patched = api.patch(f"/backends/{made.get_json()['id']}", {"relay_cookies": True})
    assert patched.status_code == 422 and "relay_cookies" in patched.get_json()["error"]["fields"]
    switched = api.patch(f"/backends/{http.get_json()['id']}", {"relay_cookies": True, "kind": "anthropic"})
    assert switched.status_code == 422


def test_backend_list_is_paginated_newest_first(api):
    first, second = factories.backend(api), factories.backend(api)

    body = api.get("/backends").get_json()

    assert ([b["id"] for b in body["items"]], body["total"], body["page"], body["page_size"]) == (
        [second["id"], first["id"]], 2, 1, 50)


def test_patch_backend_changes_the_given_fields(api):
    backend = factories.backend(api, kind="anthropic")

    response = api.patch(f"/backends/{backend['id']}", {"enabled": False, "weight": 0, "models": ["claude-*"]})

    assert response.status_code == 200
    assert response.get_json() == {**backend, "enabled": False, "weight": 0, "models": ["claude-*"]}


def test_backend_validation_names_every_bad_field(api):
    response = api.post("/backends", {"name": "has space", "kind": "grpc", "base_url": "ftp://files.test",
                                      "weight": -1, "enabled": "yes", "read_timeout": 0})

    assert response.status_code == 422
    assert set(response.get_json()["error"]["fields"]) == {"name", "kind", "base_url", "weight", "enabled",
                                                          "read_timeout"}


def test_backend_url_with_credentials_or_duplicate_name_is_rejected(api):
    factories.backend(api, name="dup")

    with_credentials = api.post("/backends", {"name": "b", "kind": "http", "base_url": "https://u:p@h.test"})
    duplicate = api.post("/backends", {"name": "dup", "kind": "http", "base_url": "https://h.test"})

    assert list(with_credentials.get_json()["error"]["fields"]) == ["base_url"]
    assert duplicate.get_json()["error"]["fields"] == {"name": "is already used by another backend"}


def test_delete_backend_removes_it_and_its_upstream_keys(api):
    backend = factories.backend(api)
    factories.upstream_key(api, backend["id"], SECRET)

    response = api.delete(f"/backends/{backend['id']}")

    assert response.get_json() == {"deleted": True, "id": backend["id"]}
    assert api.get(f"/backends/{backend['id']}").status_code == 404
    assert api.get("/upstream-keys").get_json()["total"] == 0


def test_add_upstream_key_answers_masked_with_health_and_counters(api):
    backend = factories.backend(api, name="main")

    response = api.post(f"/backends/{backend['id']}/keys", {"secret": SECRET, "label": "primary", "weight": 2})

    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == UPSTREAM_KEY_FIELDS
    assert {k: body[k] for k in ("backend_id", "backend", "label", "masked", "last4", "weight", "enabled",
                                 "state", "requests", "failures", "tokens_in", "tokens_out",
                                 "consecutive_failures", "last_error")} == {
        "backend_id": backend["id"], "backend": "main", "label": "primary", "masked": "****WXYZ",
        "last4": "WXYZ", "weight": 2, "enabled": True, "state": "healthy", "requests": 0, "failures": 0,
        "tokens_in": 0, "tokens_out": 0, "consecutive_failures": 0, "last_error": None,
    }
    assert api.get(f"/backends/{backend['id']}").get_json()["key_states"] == {"healthy": 1}


def test_short_upstream_secret_is_rejected_and_a_medium_one_shows_no_characters(api):
    backend = factories.backend(api)

    short = api.post(f"/backends/{backend['id']}/keys", {"secret": "abc"})
    medium = factories.upstream_key(api, backend["id"], "abcdefgh1234")

    assert list(short.get_json()["error"]["fields"]) == ["secret"]
    assert (medium["masked"], medium["last4"]) == ("****", "")


def test_upstream_key_list_filters_by_backend_and_state(api, app):
    one, two = factories.backend(api), factories.backend(api)
    a = factories.upstream_key(api, one["id"], SECRET)
    b = factories.upstream_key(api, two["id"], SECRET + "-2")
    with app.app_context():
        db.session.get(UpstreamKey, b["id"]).state = "disabled"
        db.session.commit()

    assert [k["id"] for k in api.get("/upstream-keys").get_json()["items"]] == [b["id"], a["id"]]
    assert [k["id"] for k in api.get("/upstream-keys", backend_id=one["id"]).get_json()["items"]] == [a["id"]]
    assert [k["id"] for k in api.get("/upstream-keys", state="disabled").get_json()["items"]] == [b["id"]]


def test_patch_upstream_key_replaces_the_secret_write_only(api, app):
    backend = factories.backend(api)
    key = factories.upstream_key(api, backend["id"], SECRET)
    replacement = "sk-replacement-000111222333-ABCD"

    response = api.patch(f"/upstream-keys/{key['id']}", {"secret": replacement, "label": "rotated", "weight": 5})

    assert response.status_code == 200
    body = response.get_json()
    assert (body["label"], body["weight"], body["masked"]) == ("rotated", 5, "****ABCD")
    with app.app_context():
        stored = db.session.get(UpstreamKey, key["id"]).secret_encrypted
    assert Fernet(ENCRYPTION_KEY.encode()).decrypt(stored.encode()).decode() == replacement
    assert api.get("/audit").get_json()["items"][0]["detail"] == {
        "label": "rotated", "weight": 5, "secret_replaced": True, "last4": "ABCD"}


def test_upstream_key_body_cannot_write_ciphertext_state_or_counters(api, app):
    backend = factories.backend(api)
    key = factories.upstream_key(api, backend["id"], SECRET)

    rejected = api.patch(f"/upstream-keys/{key['id']}", {"secret_encrypted": "gAAAA-forged"})
    ignored = api.patch(f"/upstream-keys/{key['id']}", {"state": "disabled", "requests": 50, "failures": 3})

    assert rejected.status_code == 422
    assert list(rejected.get_json()["error"]["fields"]) == ["secret_encrypted"]
    assert ignored.status_code == 200
    assert (ignored.get_json()["state"], ignored.get_json()["requests"], ignored.get_json()["failures"]) == (
        "healthy", 0, 0)
    with app.app_context():
        stored = db.session.get(UpstreamKey, key["id"]).secret_encrypted
    assert Fernet(ENCRYPTION_KEY.encode()).decrypt(stored.encode()).decode() == SECRET


def test_reset_brings_a_disabled_upstream_key_back_to_healthy(api, app):
    backend = factories.backend(api)
    key = factories.upstream_key(api, backend["id"], SECRET)
    with app.app_context():
        row = db.session.get(UpstreamKey, key["id"])
        row.state, row.consecutive_failures, row.consecutive_successes = "disabled", 3, 1
        db.session.commit()

    response = api.post(f"/upstream-keys/{key['id']}/reset")

    assert response.status_code == 200
    assert (response.get_json()["state"], response.get_json()["consecutive_failures"],
            response.get_json()["cooldown_until"]) == ("healthy", 0, None)
    assert api.get("/audit").get_json()["items"][0]["action"] == "upstream_key.reset"
    assert api.get("/audit").get_json()["items"][0]["detail"] == {"from": "disabled"}


def test_delete_upstream_key(api):
    key = factories.upstream_key(api, factories.backend(api)["id"], SECRET)

    response = api.delete(f"/upstream-keys/{key['id']}")

    assert response.get_json() == {"deleted": True, "id": key["id"]}
    assert api.get(f"/upstream-keys/{key['id']}").status_code == 404


def test_unknown_backend_and_upstream_key_ids_answer_404(api):
    assert api.get("/backends/55").status_code == 404
    assert api.patch("/backends/55", {"weight": 1}).status_code == 404
    assert api.delete("/backends/55").status_code == 404
    assert api.post("/backends/55/keys", {"secret": SECRET}).status_code == 404
    assert api.patch("/upstream-keys/55", {"weight": 1}).status_code == 404
    assert api.delete("/upstream-keys/55").status_code == 404
    assert api.post("/upstream-keys/55/reset").status_code == 404


def test_upstream_secret_is_stored_only_fernet_encrypted_and_never_answered(api, app, caplog):
    backend = factories.backend(api)
    key = factories.upstream_key(api, backend["id"], SECRET)
    api.patch(f"/upstream-keys/{key['id']}", {"label": "x"})
    api.post(f"/upstream-keys/{key['id']}/reset")

    with app.app_context():
        raw = db.session.execute(text("SELECT * FROM upstream_keys WHERE id = :id"), {"id": key["id"]}).mappings().one()
        audit_rows = db.session.execute(text("SELECT detail FROM audit_log")).all()
    answers = [api.get(p).get_data(as_text=True) for p in (
        "/upstream-keys", f"/upstream-keys/{key['id']}", "/backends", f"/backends/{backend['id']}", "/audit")]

    assert raw["secret_encrypted"].startswith("gAAAA")
    assert Fernet(ENCRYPTION_KEY.encode()).decrypt(raw["secret_encrypted"].encode()).decode() == SECRET
    assert not any(SECRET in str(value) for value in raw.values())
    assert not any(SECRET in str(row) for row in audit_rows)
    assert not any(SECRET in answer for answer in answers)
    assert SECRET not in caplog.text
