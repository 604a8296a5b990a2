"""Role enforcement, checked against the URL map so a new route cannot slip through."""
from __future__ import annotations

import re

import pytest
from flask import Flask

from tests.portal.helpers import csrf_from

OPEN_ENDPOINTS = {"portal.login"}


def _portal_rules(app: Flask):
    return [rule for rule in app.url_map.iter_rules()
            if rule.rule.startswith("/admin") and not rule.rule.startswith("/api/")
            and rule.endpoint not in OPEN_ENDPOINTS and rule.endpoint != "static"]


def _concrete(rule) -> str:
    return re.sub(r"<(?:int:)?[a-z_]+>", "1", rule.rule)


def test_the_portal_has_routes_to_check(app: Flask):
    endpoints = {rule.endpoint for rule in _portal_rules(app)}
    assert {"portal.dashboard", "portal.users", "portal.key_revoke", "portal.upstream_key_test",
            "portal.logs_csv", "portal.audit_log", "portal.tier_delete"} <= endpoints


def test_every_admin_route_refuses_anonymous_users(app: Flask, client, make_user, make_key):
    user_id = make_user()
    make_key(user_id)
    checked = 0
    for rule in _portal_rules(app):
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(_concrete(rule), method=method)
            if method == "GET":
                assert response.status_code == 302, (method, rule.rule)
                assert "/admin/login" in response.headers["Location"], rule.rule
            else:  # unsafe methods without a session: CSRF (400) or the login redirect, never success
                assert response.status_code in (302, 400, 401, 403), (method, rule.rule, response.status_code)
                assert response.status_code != 302 or "/admin/login" in response.headers["Location"]
            checked += 1
    assert checked >= 25


def test_anonymous_unsafe_requests_with_a_valid_token_still_go_to_login(app: Flask, client):
    token = csrf_from(client.get("/admin/login").get_data(as_text=True))
    for rule in _portal_rules(app):
        if "POST" in rule.methods and rule.endpoint != "portal.logout":
            response = client.post(_concrete(rule), data={"csrf_token": token})
            assert response.status_code == 302 and "/admin/login" in response.headers["Location"], rule.rule


def test_a_viewer_cannot_post_to_any_route(app: Flask, viewer_client, make_user, make_key):
    user_id = make_user()
    make_key(user_id)
    token = csrf_from(viewer_client.get("/admin/").get_data(as_text=True))
    posted = 0
    for rule in _portal_rules(app):
        if "POST" in rule.methods and rule.endpoint != "portal.logout":
            response = viewer_client.post(_concrete(rule), data={"csrf_token": token, "name": "x"})
            assert response.status_code == 403, rule.rule
            posted += 1
    assert posted >= 15
    assert viewer_client.get(f"/admin/users/{user_id}").status_code == 200  # still signed in, unchanged


@pytest.mark.parametrize("path", ["/admin/", "/admin/users", "/admin/tiers", "/admin/backends", "/admin/logs",
                                  "/admin/audit"])
def test_a_viewer_can_read_every_page_but_sees_no_write_buttons(viewer_client, path):
    response = viewer_client.get(path)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "New user" not in html and "New tier" not in html and "New backend" not in html


def test_a_viewer_gets_403_on_form_pages(viewer_client, make_user):
    user_id = make_user()
    for path in ("/admin/users/new", f"/admin/users/{user_id}/edit", "/admin/tiers/new", "/admin/backends/new"):
        response = viewer_client.get(path)
        assert response.status_code == 403, path
        assert "read-only" in response.get_data(as_text=True)


def test_a_viewer_may_sign_out(viewer_client):
    token = csrf_from(viewer_client.get("/admin/").get_data(as_text=True))
    assert viewer_client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert viewer_client.get("/admin/").status_code == 302
