"""Sign-in, sign-out and sessions."""
from __future__ import annotations

from flask import Flask

from gateway.extensions import db
from gateway.models import Admin
from tests.portal.conftest import build_app
from tests.portal.helpers import ADMIN_PASSWORD, csrf_from, sign_in

BAD = "Unknown username or wrong password."


def test_login_page_renders_a_form_with_a_csrf_token(client, admins):
    page = client.get("/admin/login")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'name="password"' in html and csrf_from(html)


def test_unknown_user_and_wrong_password_get_the_same_answer(client, admins):
    unknown = sign_in(client, "nobody", ADMIN_PASSWORD)
    wrong = sign_in(client, "alice", "wrong password!")
    assert unknown.status_code == wrong.status_code == 401
    assert BAD in unknown.get_data(as_text=True) and BAD in wrong.get_data(as_text=True)
    assert "nobody" not in unknown.get_data(as_text=True).replace('value="nobody"', "")


def test_sign_in_starts_a_new_session_and_reaches_the_dashboard(client, admins):
    with client.session_transaction() as sess:
        sess["planted"] = "by an attacker"
    response = sign_in(client, "alice", ADMIN_PASSWORD)
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/")
    with client.session_transaction() as sess:
        assert "planted" not in sess
        assert sess["_user_id"].startswith(f"{admins['admin']}:")
    assert client.get("/admin/").status_code == 200


def test_session_cookie_is_httponly_and_samesite_lax(client, admins):
    sign_in(client, "alice", ADMIN_PASSWORD)
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"


def test_next_parameter_only_redirects_inside_the_portal(client, admins):
    page = client.get("/admin/login")
    data = {"username": "alice", "password": ADMIN_PASSWORD, "csrf_token": csrf_from(page.get_data(as_text=True))}
    response = client.post("/admin/login?next=https://evil.example/", data=data)
    assert response.headers["Location"].endswith("/admin/")
    client.post("/admin/logout", data={"csrf_token": csrf_from(client.get("/admin/").get_data(as_text=True))})
    page = client.get("/admin/login")
    data["csrf_token"] = csrf_from(page.get_data(as_text=True))
    response = client.post("/admin/login?next=/admin/tiers", data=data)
    assert response.headers["Location"].endswith("/admin/tiers")


def test_sign_out_kills_every_copy_of_the_old_cookie(app: Flask, admins):
    client = app.test_client()
    sign_in(client, "alice", ADMIN_PASSWORD)
    stolen = client.get_cookie("session").value
    token = csrf_from(client.get("/admin/").get_data(as_text=True))
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    with app.app_context():
        assert db.session.get(Admin, admins["admin"]).session_version == 1
    replay = app.test_client()
    replay.set_cookie("session", stolen)
    response = replay.get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


def test_a_stale_session_version_is_rejected(app: Flask, admins):
    client = app.test_client()
    sign_in(client, "alice", ADMIN_PASSWORD)
    with app.app_context():
        db.session.get(Admin, admins["admin"]).session_version = 7
        db.session.commit()
    assert client.get("/admin/").status_code == 302


def test_deactivated_admin_cannot_sign_in(app: Flask, client, admins):
    with app.app_context():
        db.session.get(Admin, admins["admin"]).active = False
        db.session.commit()
    response = sign_in(client, "alice", ADMIN_PASSWORD)
    assert response.status_code == 401 and BAD in response.get_data(as_text=True)


def test_sign_in_records_an_audit_entry_without_the_password(app: Flask, client, admins):
    sign_in(client, "alice", ADMIN_PASSWORD)
    page = client.get("/admin/audit").get_data(as_text=True)
    assert "admin.login" in page and ADMIN_PASSWORD not in page


def test_failures_per_address_are_throttled_across_usernames(env):
    app = build_app(env, ADMIN_AUTH_FAILURES_PER_MINUTE="3")  # an address gets twice that: 6
    from gateway.services.admins import create as create_admin
    from gateway.transaction import committed

    with app.app_context(), committed():
        create_admin("alice", ADMIN_PASSWORD)
    client = app.test_client()
    for attempt in range(6):
        assert sign_in(client, f"guess{attempt}", "wrong password!").status_code == 401
    assert sign_in(client, "alice", ADMIN_PASSWORD).status_code == 429
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "192.0.2.50"
    assert sign_in(elsewhere, "alice", ADMIN_PASSWORD).status_code == 302
