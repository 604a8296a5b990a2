"""Every portal form is CSRF-protected: a missing, wrong or expired token changes nothing."""
from __future__ import annotations

import time

from flask import Flask

from gateway.extensions import db
from gateway.models import User
from tests.portal.conftest import build_app
from tests.portal.helpers import ADMIN_PASSWORD, sign_in, token


def _user_count(app: Flask) -> int:
    with app.app_context():
        return db.session.query(User).count()


def test_missing_token_is_rejected(app: Flask, admin_client):
    response = admin_client.post("/admin/users/new", data={"name": "Eve", "tier": "dev"})
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    assert _user_count(app) == 0


def test_wrong_token_is_rejected(app: Flask, admin_client):
    response = admin_client.post("/admin/users/new", data={"name": "Eve", "tier": "dev", "csrf_token": "forged"})
    assert response.status_code == 400
    assert _user_count(app) == 0


def test_a_token_from_another_session_is_rejected(app: Flask, admin_client, admins):
    other = app.test_client()
    sign_in(other, "victor", "viewer horse battery")
    foreign = token(other)
    response = admin_client.post("/admin/users/new", data={"name": "Eve", "tier": "dev", "csrf_token": foreign})
    assert response.status_code == 400 and _user_count(app) == 0


def test_expired_token_is_rejected(env):
    app = build_app(env)
    app.config["WTF_CSRF_TIME_LIMIT"] = 1
    from gateway.services.admins import create as create_admin
    from gateway.transaction import committed

    with app.app_context(), committed():
        create_admin("alice", ADMIN_PASSWORD)
    client = app.test_client()
    assert sign_in(client, "alice", ADMIN_PASSWORD).status_code == 302
    stale = token(client, "/admin/users/new")
    time.sleep(2.1)
    response = client.post("/admin/users/new", data={"name": "Eve", "tier": "dev", "csrf_token": stale})
    assert response.status_code == 400
    assert _user_count(app) == 0
    fresh = token(client, "/admin/users/new")
    assert client.post("/admin/users/new", data={"name": "Eve", "tier": "dev", "quota_period": "monthly",
                                                 "status": "active", "csrf_token": fresh}).status_code == 302


def test_sign_in_itself_needs_a_token(client, admins):
    response = client.post("/admin/login", data={"username": "alice", "password": ADMIN_PASSWORD})
    assert response.status_code == 400
    assert client.get("/admin/").status_code == 302


def test_sign_out_needs_a_token(admin_client):
    assert admin_client.post("/admin/logout").status_code == 400
    assert admin_client.get("/admin/").status_code == 200
