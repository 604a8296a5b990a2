"""One rule for keys (``gateway.key_rules``) across the proxy, ``/api/usage``, the
admin API and ``flask import-key``: what a key looks like, and what rotation stores."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from gateway.extensions import db
from gateway.models import ApiKey, User
from gateway.timeutil import utcnow
from tests.test_cli import run

LONG_KEY = "sk-legacy-" + "k" * 220  # 230 characters: over the old /api/usage limit of 200


def _user_id(app, name: str = "legacy") -> int:  # type: ignore[no-untyped-def]
    assert run(app, "create-user", "--name", name).exit_code == 0
    with app.app_context():
        return db.session.scalar(select(User.id).where(User.name == name))


def test_an_imported_230_character_key_reads_its_usage_from_either_header(app, client) -> None:  # type: ignore[no-untyped-def]
    result = run(app, "import-key", "--user-id", str(_user_id(app)), "--key", LONG_KEY)
    assert result.exit_code == 0, result.output

    for headers in ({"Authorization": f"Bearer {LONG_KEY}"}, {"X-API-Key": LONG_KEY}, {"x-api-key": LONG_KEY}):
        response = client.get("/api/usage", headers=headers)
        assert response.status_code == 200, headers
        assert response.get_json()["owner"] == "legacy"
        assert response.get_json()["key"].endswith("****kkkk")


def test_import_refuses_a_key_the_proxy_would_refuse(app) -> None:  # type: ignore[no-untyped-def]
    user_id = str(_user_id(app))

    too_long = run(app, "import-key", "--user-id", user_id, "--key", "sk-legacy-" + "k" * 247)  # 257 characters
    unprintable = run(app, "import-key", "--user-id", user_id, "--key", "sk-legacy-abcdefghijkl\x07mnop")
    longest = run(app, "import-key", "--user-id", user_id, "--key", "sk-legacy-" + "k" * 246)  # 256: the limit

    assert too_long.exit_code == 1 and "key must be at most 256 printable characters" in too_long.output
    assert unprintable.exit_code == 1 and "key must be at most 256 printable characters" in unprintable.output
    assert longest.exit_code == 0, longest.output


def test_rotation_stores_grace_until_only_and_the_api_still_reports_it_as_revoked_at(  # type: ignore[no-untyped-def]
        app, client, admin_headers) -> None:
    user = client.post("/api/admin/users", json={"name": "dana"}, headers=admin_headers).get_json()
    old = client.post(f"/api/admin/users/{user['id']}/keys", json={}, headers=admin_headers).get_json()

    client.post(f"/api/admin/keys/{old['id']}/rotate", json={"grace_seconds": 600}, headers=admin_headers)

    shown = client.get(f"/api/admin/keys/{old['id']}", headers=admin_headers).get_json()
    assert shown["status"] == "rotating"
    assert shown["revoked_at"] == shown["grace_until"] is not None
    with app.app_context():
        row = db.session.get(ApiKey, old["id"])
        assert row.revoked_at is None and row.grace_until is not None


def test_the_migration_moves_rotated_rows_to_grace_until_and_back(app) -> None:  # type: ignore[no-untyped-def]
    """Before revision 0002 a rotated key had revoked_at == grace_until (a future
    revocation); from 0002 on it has grace_until alone. Explicit revocations stay."""
    from flask_migrate import downgrade, upgrade

    user_id = _user_id(app, "migrated")
    grace = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
    revoked = (utcnow() - timedelta(hours=1)).replace(microsecond=0)
    keys = ApiKey.__table__
    with app.app_context():
        db.session.remove()
        downgrade(revision="0001")
        with db.engine.begin() as conn:
            for label, revoked_at, grace_until in (("rotated", grace, grace), ("revoked", revoked, None),
                                                   ("live", None, None)):
                conn.execute(keys.insert().values(user_id=user_id, label=label, key_hash=label * 8, prefix="sk-dev-",
                                                  last4="abcd", revoked_at=revoked_at, grace_until=grace_until))

        def stored() -> dict[str, tuple]:
            with db.engine.connect() as conn:
                return {label: (r, g) for label, r, g in conn.execute(
                    select(keys.c.label, keys.c.revoked_at, keys.c.grace_until)
                    .where(keys.c.label.in_(["rotated", "revoked", "live"]))).all()}

        upgrade()
        after_upgrade = stored()
        downgrade(revision="0001")
        after_downgrade = stored()
        upgrade()

    assert after_upgrade == {"rotated": (None, grace), "revoked": (revoked, None), "live": (None, None)}
    assert after_downgrade == {"rotated": (grace, grace), "revoked": (revoked, None), "live": (None, None)}
