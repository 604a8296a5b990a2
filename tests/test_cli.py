"""The operator commands, run through Flask's CLI runner against the real database."""
import json

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select
from werkzeug.security import check_password_hash

from gateway import create_app
from gateway.extensions import db
from gateway.models import Admin, ApiKey, AuditLog, Backend, UpstreamKey, User
from gateway.secrets_box import InvalidToken, SecretBox, hash_user_key
from tests.conftest import ENCRYPTION_KEY, PEPPER


@pytest.fixture
def build(env):
    """Build an app from the test environment plus ``extra`` settings (disposed afterwards)."""
    apps = []

    def _build(**extra):
        app = create_app(env={**env, **extra})
        apps.append(app)
        return app

    yield _build
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def run(app, *args):
    return app.test_cli_runner().invoke(args=list(args))


def test_create_admin_stores_a_password_hash_and_an_audit_row(app):
    result = run(app, "create-admin", "--username", "root", "--password", "correct horse battery")

    assert result.exit_code == 0, result.output
    assert result.output == "created admin root\n"
    with app.app_context():
        admin = db.session.scalar(select(Admin).where(Admin.username == "root"))
        assert check_password_hash(admin.password_hash, "correct horse battery")
        assert "correct horse" not in admin.password_hash
        audit = db.session.scalar(select(AuditLog).where(AuditLog.action == "admin.create"))
        assert audit.detail == {"username": "root", "role": "admin"}


def test_create_admin_refuses_a_short_password_and_a_duplicate(app):
    short = run(app, "create-admin", "--username", "root", "--password", "short")
    run(app, "create-admin", "--username", "root", "--password", "long-enough-pw")
    duplicate = run(app, "create-admin", "--username", "root", "--password", "long-enough-pw")

    assert short.exit_code == 1
    assert "password must be at least 10 characters" in short.output
    assert duplicate.exit_code == 1
    assert "username already exists" in duplicate.output


def test_create_user_prints_the_key_once_and_stores_only_its_hash(app):
    result = run(app, "create-user", "--name", "alice", "--tier", "pro", "--token-quota", "5000",
                 "--period", "daily")

    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    plaintext = lines[1]
    assert plaintext.startswith("sk-pro-")
    assert result.output.count(plaintext) == 1
    with app.app_context():
        key = db.session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_user_key(plaintext, PEPPER)))
        assert key is not None
        assert (key.user.name, key.user.tier.name, key.user.token_quota, key.user.quota_period) == (
            "alice", "pro", 5000, "daily")
        assert lines[0] == f"user {key.user_id} (alice), key {key.id}:"


def test_create_user_with_an_unknown_tier_fails(app):
    result = run(app, "create-user", "--name", "alice", "--tier", "gold")

    assert result.exit_code == 1
    assert "tier no tier with that name" in result.output


def test_import_key_stores_the_hmac_of_the_given_plaintext(app):
    run(app, "create-user", "--name", "legacy")
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.name == "legacy"))
    plaintext = "sk-legacy-abcdefghijklmnopqrstuvwxyz"

    result = run(app, "import-key", "--user-id", str(user_id), "--key", plaintext)
    again = run(app, "import-key", "--user-id", str(user_id), "--key", plaintext)

    assert result.exit_code == 0, result.output
    assert plaintext not in result.output
    with app.app_context():
        key = db.session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_user_key(plaintext, PEPPER)))
        assert (key.user_id, key.label, key.last4) == (user_id, "imported", "wxyz")
        assert result.output == f"imported key {key.id} for user {user_id}\n"
    assert again.exit_code == 1
    assert "key is already registered" in again.output


def test_import_key_rejects_an_unknown_user_and_a_weak_key(app):
    run(app, "create-user", "--name", "legacy")
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.name == "legacy"))

    unknown = run(app, "import-key", "--user-id", "9999", "--key", "sk-legacy-abcdefghijklmnop")
    beyond = run(app, "import-key", "--user-id", "2147483648", "--key", "sk-legacy-abcdefghijklmnop")
    weak = run(app, "import-key", "--user-id", str(user_id), "--key", "short")

    assert unknown.exit_code == 1 and "no user with id 9999" in unknown.output
    assert beyond.exit_code == 1 and "no user with id 2147483648" in beyond.output  # not a PostgreSQL error
    assert weak.exit_code == 1 and "key must be at least 20 characters" in weak.output


def _backends(app):
    with app.app_context():
        out = {}
        for backend in db.session.scalars(select(Backend).order_by(Backend.name)):
            out[backend.name] = (backend.kind, backend.base_url, backend.models,
                                 [app.extensions["keygate.box"].decrypt(k.secret_encrypted)
                                  for k in sorted(backend.upstream_keys, key=lambda k: k.id)])
        return out


def test_bootstrap_creates_the_first_admin_and_imports_backends_once(build):
    backends_json = json.dumps([{"name": "images", "kind": "http", "base_url": "http://images.internal:8080",
                                 "keys": ["img-secret-0123456789"]}])
    app = build(ADMIN_PASSWORD="first-run-password", BACKENDS_JSON=backends_json,
                OPENAI_BASE_URL="https://openai.example.test/v1",
                OPENAI_API_KEYS="sk-openai-one-0000000000,sk-openai-two-1111111111")

    first = run(app, "bootstrap")
    second = run(app, "bootstrap")

    assert first.exit_code == 0, first.output
    assert first.output == "created admin admin\nimported 2 backend(s)\n"
    assert second.output == "imported 0 backend(s)\n"
    assert _backends(app) == {
        "images": ("http", "http://images.internal:8080", [], ["img-secret-0123456789"]),
        "openai": ("openai", "https://openai.example.test/v1", ["*"],
                   ["sk-openai-one-0000000000", "sk-openai-two-1111111111"]),
    }
    with app.app_context():
        stored = [k.secret_encrypted for k in db.session.scalars(select(UpstreamKey))]
        assert all("sk-openai" not in s and "img-secret" not in s for s in stored)


def test_openai_keys_without_a_base_url_import_the_official_endpoint(build):
    app = build(OPENAI_API_KEYS="sk-openai-one-0000000000")

    result = run(app, "import-backends")

    assert result.output == "imported 1 backend(s)\n"
    assert _backends(app) == {"openai": ("openai", "https://api.openai.com/v1", ["*"], ["sk-openai-one-0000000000"])}


def test_a_bad_backend_spec_imports_nothing(build):
    backends_json = json.dumps([{"name": "good", "kind": "openai", "base_url": "https://good.test"},
                                {"name": "bad", "kind": "grpc", "base_url": "https://bad.test"}])
    app = build(BACKENDS_JSON=backends_json)

    result = run(app, "import-backends")

    assert result.exit_code == 1
    assert "backend bad kind must be one of openai, anthropic, gemini, http" in result.output
    assert _backends(app) == {}


def test_backends_json_that_is_not_json_fails_clearly(build):
    app = build(BACKENDS_JSON="[{oops")

    result = run(app, "import-backends")

    assert result.exit_code == 1
    assert "BACKENDS_JSON is not JSON" in result.output


def test_rotate_encryption_key_re_encrypts_so_only_the_new_key_is_needed(build, app, client, admin_headers):
    backend = client.post("/api/admin/backends", json={"name": "main", "kind": "openai",
                                                       "base_url": "https://a.test"}, headers=admin_headers)
    for secret in ("sk-upstream-aaaa-000000000", "sk-upstream-bbbb-111111111"):
        client.post(f"/api/admin/backends/{backend.get_json()['id']}/keys", json={"secret": secret},
                    headers=admin_headers)
    new_key = Fernet.generate_key().decode()

    result = run(build(ENCRYPTION_KEY=f"{new_key},{ENCRYPTION_KEY}"), "rotate-encryption-key")

    assert result.exit_code == 0, result.output
    assert result.output == "re-encrypted 2 upstream secret(s) with the newest key\n"
    assert _backends(build(ENCRYPTION_KEY=new_key))["main"][3] == [
        "sk-upstream-aaaa-000000000", "sk-upstream-bbbb-111111111"]
    with app.app_context():
        stored = [k.secret_encrypted for k in db.session.scalars(select(UpstreamKey))]
        assert db.session.scalar(select(func.count()).select_from(AuditLog)
                                 .where(AuditLog.action == "encryption.rotate")) == 1
    old_box = SecretBox([ENCRYPTION_KEY])
    for token in stored:
        with pytest.raises(InvalidToken):
            old_box.decrypt(token)


def test_rotate_encryption_key_without_the_old_key_fails_and_changes_nothing(build, app, client, admin_headers):
    backend = client.post("/api/admin/backends", json={"name": "main", "kind": "openai",
                                                       "base_url": "https://a.test"}, headers=admin_headers)
    client.post(f"/api/admin/backends/{backend.get_json()['id']}/keys", json={"secret": "sk-upstream-0123456789"},
                headers=admin_headers)

    result = run(build(ENCRYPTION_KEY=Fernet.generate_key().decode()), "rotate-encryption-key")

    assert result.exit_code == 1
    assert "fits none of the configured keys" in result.output
    assert _backends(app)["main"][3] == ["sk-upstream-0123456789"]


def test_create_user_whose_key_is_refused_leaves_no_user(app):
    """The user row is flushed before the key is validated; one transaction means the
    refused key takes the user with it instead of leaving an orphan without a key."""
    result = run(app, "create-user", "--name", "half-done", "--label", "x" * 201)

    assert result.exit_code == 1
    assert "label must be at most 200 characters" in result.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(User)) == 0
        assert db.session.scalar(select(func.count()).select_from(AuditLog)
                                 .where(AuditLog.action == "user.create")) == 0
