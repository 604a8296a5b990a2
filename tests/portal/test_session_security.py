"""Issue 15, finding 11 (portal): session protection on the trusted address, idle and
absolute session lifetimes, and the browser security headers."""
from __future__ import annotations

import time

import pytest
from flask import Flask

from gateway.portal.auth import SEEN_AT, SIGNED_IN_AT
from tests.portal.conftest import build_app
from tests.portal.helpers import ADMIN_PASSWORD, sign_in


def _signed_in(app: Flask, **environ: str):
    from gateway.services.admins import create as create_admin
    from gateway.transaction import committed

    with app.app_context(), committed():
        create_admin("alice", ADMIN_PASSWORD)
    client = app.test_client()
    client.environ_base.update(environ)
    assert sign_in(client, "alice", ADMIN_PASSWORD).status_code == 302
    assert client.get("/admin/").status_code == 200
    return client


def test_a_changed_client_supplied_forwarded_for_does_not_end_the_session(env):
    """TRUSTED_PROXY_COUNT=0: X-Forwarded-For is the client's own words, not its address."""
    app = build_app(env, TRUSTED_PROXY_COUNT="0")
    client = _signed_in(app, REMOTE_ADDR="192.0.2.10", HTTP_X_FORWARDED_FOR="203.0.113.1")
    client.environ_base["HTTP_X_FORWARDED_FOR"] = "203.0.113.2"
    assert client.get("/admin/").status_code == 200
    del client.environ_base["HTTP_X_FORWARDED_FOR"]
    assert client.get("/admin/").status_code == 200


def test_a_session_presented_from_another_trusted_address_is_signed_out(env):
    """Strong session protection: a cookie used from another client address is dropped."""
    app = build_app(env, TRUSTED_PROXY_COUNT="1")
    client = _signed_in(app, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.1")
    client.environ_base["HTTP_X_FORWARDED_FOR"] = "198.51.100.20"
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


def test_an_ipv6_client_moving_inside_its_64_keeps_its_session(env):
    app = build_app(env, TRUSTED_PROXY_COUNT="0")
    client = _signed_in(app, REMOTE_ADDR="2001:db8:1:2::10")
    client.environ_base["REMOTE_ADDR"] = "2001:db8:1:2::99"  # privacy addresses rotate inside the /64
    assert client.get("/admin/").status_code == 200


def _age(client, **seconds: int) -> None:
    with client.session_transaction() as sess:
        for name, ago in seconds.items():
            sess[name] = int(time.time()) - ago


def test_an_idle_session_is_signed_out(env):
    app = build_app(env, PORTAL_IDLE_TIMEOUT_SECONDS="600")
    client = _signed_in(app)
    _age(client, **{SEEN_AT: 300})
    assert client.get("/admin/").status_code == 200  # used again within the timeout: renewed
    with client.session_transaction() as sess:
        assert int(time.time()) - sess[SEEN_AT] < 300
    _age(client, **{SEEN_AT: 601})
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    assert client.get("/admin/").status_code == 302  # the session is gone, not just this request


def test_a_session_ends_at_its_absolute_lifetime_however_busy(env):
    app = build_app(env, PORTAL_IDLE_TIMEOUT_SECONDS="600", PORTAL_SESSION_MAX_SECONDS="3600")
    client = _signed_in(app)
    _age(client, **{SIGNED_IN_AT: 3601})  # last seen a moment ago
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


PAGES = ["/admin/login", "/admin/", "/admin/users", "/usage", "/admin/no-such-page"]


@pytest.mark.parametrize("path", PAGES)
def test_portal_and_usage_pages_forbid_framing_and_sniffing(env, path):
    app = build_app(env)
    client = _signed_in(app)
    response = client.get(path)
    assert response.mimetype == "text/html"
    headers = response.headers
    assert headers["X-Frame-Options"] == "DENY"
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "object-src 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "Strict-Transport-Security" not in headers  # plain HTTP, no setting: no HSTS


def test_json_answers_are_nosniff_too(client, admin_headers):
    for response in (client.get("/api/admin/tiers", headers=admin_headers), client.get("/health"),
                     client.post("/v1/chat/completions", json={})):
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_hsts_is_sent_over_https_as_the_trusted_proxy_says(env):
    app = build_app(env, TRUSTED_PROXY_COUNT="1")
    client = app.test_client()
    https = client.get("/admin/login", headers={"X-Forwarded-For": "203.0.113.1", "X-Forwarded-Proto": "https"})
    assert https.headers["Strict-Transport-Security"].startswith("max-age=")
    plain = client.get("/admin/login", headers={"X-Forwarded-For": "203.0.113.1", "X-Forwarded-Proto": "http"})
    assert "Strict-Transport-Security" not in plain.headers


def test_a_client_cannot_claim_https_without_a_trusted_proxy_but_a_setting_can(env):
    untrusted = build_app(env).test_client().get("/admin/login", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in untrusted.headers
    always = build_app(env, HSTS_ALWAYS="true").test_client().get("/admin/login")
    assert always.headers["Strict-Transport-Security"].startswith("max-age=")
