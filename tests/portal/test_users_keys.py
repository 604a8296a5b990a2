"""Users and their keys through the portal's forms; writes land via the services."""
from __future__ import annotations

import re

from flask import Flask

from gateway.extensions import db
from gateway.models import ApiKey, AuditLog, User
from gateway.services import keys as key_service
from tests.portal.helpers import token

USER_FORM = {"name": "Dana", "email": "dana@example.com", "tier": "pro", "status": "active",
             "token_quota": "5000", "request_quota": "", "byte_quota": "", "quota_period": "monthly",
             "reset_day": "15", "ip_allowlist": "10.0.0.0/8\n192.0.2.7", "allowed_models": "gpt-4o\nclaude-*",
             "allowed_backends": "", "notes": "VIP\nsecond line"}


def _get_user(app: Flask, user_id: int) -> User:
    with app.app_context():
        user = db.session.get(User, user_id)
        db.session.expunge(user)
        return user


def test_create_user_with_every_field(app: Flask, admin_client):
    response = admin_client.post("/admin/users/new", data={**USER_FORM, "csrf_token": token(admin_client)})
    assert response.status_code == 302
    user_id = int(response.headers["Location"].rsplit("/", 1)[1])
    with app.app_context():
        user = db.session.get(User, user_id)
        assert (user.name, user.email, user.tier.name, user.token_quota, user.request_quota) == \
            ("Dana", "dana@example.com", "pro", 5000, None)
        assert (user.quota_period, user.reset_day) == ("monthly", 15)
        assert user.ip_allowlist == ["10.0.0.0/8", "192.0.2.7/32"]
        assert user.allowed_models == ["gpt-4o", "claude-*"] and user.allowed_backends == []
        assert user.notes == "VIP\nsecond line"
        assert db.session.query(AuditLog).filter_by(action="user.create", actor="admin:alice").count() == 1


def test_service_errors_show_inline_next_to_their_field(app: Flask, admin_client):
    data = {**USER_FORM, "ip_allowlist": "not-an-ip", "reset_day": "31", "csrf_token": token(admin_client)}
    response = admin_client.post("/admin/users/new", data=data)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert re.search(r'id="ip_allowlist-error">&#39;not-an-ip&#39; is not an IP address', html)
    assert 'id="reset_day-error">must be at most 28' in html
    assert 'value="Dana"' in html  # the rest of the input is kept
    with app.app_context():
        assert db.session.query(User).count() == 0


def test_form_level_type_errors_show_inline(admin_client):
    data = {**USER_FORM, "token_quota": "lots", "name": "", "csrf_token": token(admin_client)}
    html = admin_client.post("/admin/users/new", data=data).get_data(as_text=True)
    assert 'id="token_quota-error">Not a valid integer value' in html
    assert 'id="name-error">This field is required' in html


def test_user_names_are_escaped_everywhere(app: Flask, admin_client, make_user):
    user_id = make_user("<script>alert(1)</script>")
    for path in ("/admin/users", f"/admin/users/{user_id}", f"/admin/users/{user_id}/edit"):
        html = admin_client.get(path).get_data(as_text=True)
        assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_list_searches_and_paginates(admin_client, make_user):
    for index in range(30):
        make_user(f"user{index:02d}", email=f"u{index}@corp.example")
    make_user("Zed", email="zed@other.example")
    first = admin_client.get("/admin/users").get_data(as_text=True)
    assert "Page 1 of 2 (31)" in first and "Zed" in first
    second = admin_client.get("/admin/users?page=2").get_data(as_text=True)
    assert "user00" in second and "Zed" not in second
    found = admin_client.get("/admin/users?q=other.example").get_data(as_text=True)
    assert "Zed" in found and "user01" not in found


def test_list_shows_usage_bars(admin_client, make_user, add_usage):
    user_id = make_user("Dana", token_quota=1000)
    add_usage(user_id, 300, 100)
    html = admin_client.get("/admin/users").get_data(as_text=True)
    assert 'style="width: 40.0%"' in html and "400 / 1,000 (40.0%)" in html


def test_edit_suspend_reactivate_delete(app: Flask, admin_client, make_user, make_key):
    user_id = make_user("Dana")
    key_id, _ = make_key(user_id)
    form = admin_client.get(f"/admin/users/{user_id}/edit").get_data(as_text=True)
    assert 'value="Dana"' in form
    data = {**USER_FORM, "name": "Dana B", "token_quota": "", "csrf_token": token(admin_client)}
    assert admin_client.post(f"/admin/users/{user_id}/edit", data=data).status_code == 302
    user = _get_user(app, user_id)
    assert user.name == "Dana B" and user.token_quota is None

    admin_client.post(f"/admin/users/{user_id}/suspend", data={"csrf_token": token(admin_client)})
    assert _get_user(app, user_id).status == "suspended"
    admin_client.post(f"/admin/users/{user_id}/reactivate", data={"csrf_token": token(admin_client)})
    assert _get_user(app, user_id).status == "active"
    admin_client.post(f"/admin/users/{user_id}/delete", data={"csrf_token": token(admin_client)})
    assert _get_user(app, user_id).status == "deleted"
    with app.app_context():
        assert key_service.status(db.session.get(ApiKey, key_id)) == "revoked"


def test_unknown_user_is_404(admin_client):
    assert admin_client.get("/admin/users/999").status_code == 404


def test_new_key_is_shown_once_with_a_copy_button(app: Flask, admin_client, make_user):
    user_id = make_user("Dana")
    response = admin_client.post(f"/admin/users/{user_id}/keys",
                                 data={"label": "laptop", "expires_at": "2099-01-01T00:00",
                                       "csrf_token": token(admin_client)})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    plaintext = re.search(r'id="new-key"[^>]*value="(sk-dev-[^"]+)"', html).group(1)
    assert 'data-copy="#new-key"' in html and "shown only this once" in html
    with app.app_context():
        key = db.session.query(ApiKey).one()
        assert key.label == "laptop" and key.expires_at.year == 2099
        assert plaintext not in str(db.session.query(AuditLog.detail).all())
    detail = admin_client.get(f"/admin/users/{user_id}").get_data(as_text=True)
    assert plaintext not in detail and f"{key.prefix}****{key.last4}" in detail
    assert plaintext not in str(admin_client.get_cookie("session").value)


def test_key_in_the_past_is_refused_with_a_message(app: Flask, admin_client, make_user):
    user_id = make_user("Dana")
    response = admin_client.post(f"/admin/users/{user_id}/keys", data={
        "expires_at": "2001-01-01T00:00", "csrf_token": token(admin_client)}, follow_redirects=True)
    assert "must be in the future" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.query(ApiKey).count() == 0


def test_rotate_shows_the_new_key_and_keeps_the_old_one_in_grace(app: Flask, admin_client, make_user, make_key):
    user_id = make_user("Dana")
    old_id, _ = make_key(user_id)
    response = admin_client.post(f"/admin/keys/{old_id}/rotate",
                                 data={"grace_seconds": "600", "csrf_token": token(admin_client)})
    assert response.status_code == 200 and "Key rotated" in response.get_data(as_text=True)
    with app.app_context():
        old = db.session.get(ApiKey, old_id)
        assert key_service.status(old) == "rotating"
        assert 590 <= (old.grace_until - old.created_at).total_seconds() <= 660
        assert db.session.query(ApiKey).filter_by(rotated_from_id=old_id).count() == 1


def test_revoke_and_expiry(app: Flask, admin_client, make_user, make_key):
    user_id = make_user("Dana")
    key_id, _ = make_key(user_id)
    admin_client.post(f"/admin/keys/{key_id}/expiry",
                      data={"expires_at": "2098-05-04T03:02", "csrf_token": token(admin_client)})
    with app.app_context():
        assert db.session.get(ApiKey, key_id).expires_at.isoformat() == "2098-05-04T03:02:00"
    response = admin_client.post(f"/admin/keys/{key_id}/revoke", data={"csrf_token": token(admin_client)},
                                 follow_redirects=True)
    assert "Revoked" in response.get_data(as_text=True)
    with app.app_context():
        assert key_service.status(db.session.get(ApiKey, key_id)) == "revoked"
    assert ">revoked<" in admin_client.get(f"/admin/users/{user_id}").get_data(as_text=True)
