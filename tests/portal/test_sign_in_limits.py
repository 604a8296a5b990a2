"""Issue 15, finding 9: failing sign-ins on purpose must not lock an admin out.

Addresses are varied the way production sees them: behind one trusted proxy
(TRUSTED_PROXY_COUNT=1, the peer 127.0.0.1 and the client in X-Forwarded-For), so the
gateway's trusted client address is what changes, not a header it ignores."""
from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.extensions import db
from gateway.models import AuditLog
from gateway.portal.sign_in_limits import LOCKED_ACTION, backoff_seconds
from tests.portal.conftest import build_app
from tests.portal.helpers import ADMIN_PASSWORD, sign_in

WRONG = "wrong password!"


def _app(env: dict[str, str], **extra: str) -> Flask:
    settings = {"TRUSTED_PROXY_COUNT": "1", "ADMIN_AUTH_FAILURES_PER_MINUTE": "3",
                "SIGN_IN_USERNAME_FAILURES_PER_HOUR": "5", **extra}
    app = build_app(env, **settings)
    from gateway.services.admins import create as create_admin
    from gateway.transaction import committed

    with app.app_context(), committed():
        create_admin("alice", ADMIN_PASSWORD)
    return app


def _from(app: Flask, address: str) -> FlaskClient:
    """A browser at ``address``, reaching the gateway through the trusted proxy."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.0.1"
    client.environ_base["HTTP_X_FORWARDED_FOR"] = address
    return client


def _lock_events(app: Flask) -> list[dict[str, Any]]:
    with app.app_context():
        rows = db.session.query(AuditLog).filter_by(action=LOCKED_ACTION).order_by(AuditLog.id).all()
        return [{**row.detail, "ip": row.ip, "actor": row.actor} for row in rows]


def test_an_attacker_spraying_from_many_addresses_cannot_lock_the_admin_out(env, caplog):
    app = _app(env)
    caplog.set_level(logging.WARNING, logger="gateway.security")
    for n in range(30):  # one wrong password from each of 30 addresses: far past the username's 5/hour
        assert sign_in(_from(app, f"203.0.113.{n + 1}"), "alice", WRONG).status_code == 401

    # An address that already failed for alice waits out the backoff, right password or not.
    attacker = sign_in(_from(app, "203.0.113.30"), "alice", ADMIN_PASSWORD)
    assert attacker.status_code == 429 and int(attacker.headers["Retry-After"]) >= 1
    # The admin's own address, which never failed, still signs in.
    admin = _from(app, "198.51.100.7")
    assert sign_in(admin, "Alice", ADMIN_PASSWORD).status_code == 302
    assert admin.get("/admin/").status_code == 200

    events = [e for e in _lock_events(app) if e["scope"] == "username"]
    assert [e["failures"] for e in events] == list(range(5, 31))  # each failure past the threshold, once
    assert events[0]["retry_after"] == 30 and events[-1]["retry_after"] == 900  # doubling, capped
    assert {e["actor"] for e in events} == {"security"} and events[-1]["ip"] == "203.0.113.30"
    assert ADMIN_PASSWORD not in str(events)
    logged = [r for r in caplog.records if r.name == "gateway.security"]
    assert len(logged) == len(events)
    assert logged[-1].fields["event"] == "sign_in_locked" and logged[-1].fields["username"] == "alice"


def test_the_attackers_own_address_is_throttled_per_account_and_across_accounts(env):
    app = _app(env)
    attacker = "203.0.113.9"
    for _ in range(3):
        assert sign_in(_from(app, attacker), "alice", WRONG).status_code == 401
    # That (username, address) pair is locked, even for the right password ...
    assert sign_in(_from(app, attacker), "alice", ADMIN_PASSWORD).status_code == 429
    # ... but nowhere else.
    assert sign_in(_from(app, "198.51.100.7"), "alice", ADMIN_PASSWORD).status_code == 302
    # Guessing other usernames from the same address: twice the per-account budget in all.
    for n in range(3):
        assert sign_in(_from(app, attacker), f"guess{n}", WRONG).status_code == 401
    assert sign_in(_from(app, attacker), "someone-else", WRONG).status_code == 429
    assert sign_in(_from(app, "198.51.100.8"), "someone-else", WRONG).status_code == 401

    scopes = [(e["scope"], e["ip"]) for e in _lock_events(app)]
    assert scopes == [("pair", attacker), ("address", attacker)]


def test_a_client_supplied_forwarded_for_does_not_pick_a_fresh_address(env):
    """Without a trusted proxy the header is the client's own words: varying it must not
    escape the per-address limits."""
    app = _app(env, TRUSTED_PROXY_COUNT="0")
    for n in range(3):
        client = app.test_client()
        client.environ_base["HTTP_X_FORWARDED_FOR"] = f"203.0.113.{n + 1}"
        assert sign_in(client, "alice", WRONG).status_code == 401
    client = app.test_client()
    client.environ_base["HTTP_X_FORWARDED_FOR"] = "198.51.100.7"
    assert sign_in(client, "alice", ADMIN_PASSWORD).status_code == 429


def test_a_successful_sign_in_forgives_that_address(env):
    app = _app(env, SIGN_IN_USERNAME_FAILURES_PER_HOUR="3")
    assert sign_in(_from(app, "198.51.100.7"), "alice", WRONG).status_code == 401  # the admin mistypes
    assert sign_in(_from(app, "198.51.100.7"), "alice", ADMIN_PASSWORD).status_code == 302
    for n in range(5):  # then an attack puts the username in backoff
        assert sign_in(_from(app, f"203.0.113.{n + 1}"), "alice", WRONG).status_code == 401
    assert sign_in(_from(app, "198.51.100.7"), "alice", ADMIN_PASSWORD).status_code == 302


def test_usernames_that_memcached_cannot_key_are_still_counted(env, memcached):
    """A space or control character in a memcached key is refused by the client; counted
    as a storage error, that would open the throttle for such usernames."""
    memcached.flush()
    app = _app(env, RATELIMIT_STORAGE_URI=memcached.uri)
    for _ in range(3):
        assert sign_in(_from(app, "203.0.113.9"), "al ice\u00e9", WRONG).status_code == 401
    assert sign_in(_from(app, "203.0.113.9"), "al ice\u00e9", WRONG).status_code == 429
    with app.app_context():
        from gateway.worker_state import state_of

        assert state_of(app).storage.errors == 0


@pytest.mark.parametrize(("failures", "seconds"), [(4, 0), (5, 30), (6, 60), (9, 480), (10, 900), (500, 900)])
def test_backoff_starts_at_the_threshold_and_doubles_up_to_its_cap(failures, seconds):
    assert backoff_seconds(failures, 5, 900) == seconds
