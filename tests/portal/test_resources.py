"""Tiers, backends and upstream keys through the portal."""
from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from gateway.extensions import db
from gateway.models import AuditLog, Backend, Tier, UpstreamKey
from tests.portal.helpers import token

SECRET = "sk-upstream-secret-value-9876"
TIER_FORM = {"name": "team", "key_prefix": "sk-team-", "rpm": "60", "rpd": "", "tpm": "",
             "default_token_quota": "100000", "default_request_quota": "", "default_byte_quota": "",
             "default_quota_period": "daily"}
BACKEND_FORM = {"name": "fake", "kind": "openai", "base_url": "http://127.0.0.1:9/", "weight": "2",
                "models": "gpt-4o\ngpt-4o-*", "model_aliases": "fast = gpt-4o-mini", "prices": "gpt-4o = 2.5 10",
                "enabled": "y", "connect_timeout": "1.5", "read_timeout": "", "health_check_path": ""}


def test_tier_crud(app: Flask, admin_client, make_user):
    response = admin_client.post("/admin/tiers/new", data={**TIER_FORM, "csrf_token": token(admin_client)})
    assert response.status_code == 302
    with app.app_context():
        tier = db.session.query(Tier).filter_by(name="team").one()
        assert (tier.rpm, tier.default_token_quota, tier.default_quota_period) == (60, 100000, "daily")
        tier_id = tier.id
    assert "sk-team-" in admin_client.get("/admin/tiers").get_data(as_text=True)
    assert 'value="team"' in admin_client.get(f"/admin/tiers/{tier_id}/edit").get_data(as_text=True)
    data = {**TIER_FORM, "rpm": "90", "csrf_token": token(admin_client)}
    assert admin_client.post(f"/admin/tiers/{tier_id}/edit", data=data).status_code == 302
    with app.app_context():
        assert db.session.get(Tier, tier_id).rpm == 90
    make_user("Uses team", tier="team")
    refused = admin_client.post(f"/admin/tiers/{tier_id}/delete", data={"csrf_token": token(admin_client)},
                                follow_redirects=True)
    assert "is used by 1 user(s)" in refused.get_data(as_text=True)


def test_tier_validation_errors_are_inline(admin_client):
    data = {**TIER_FORM, "name": "dev", "key_prefix": "bad prefix", "csrf_token": token(admin_client)}
    response = admin_client.post("/admin/tiers/new", data=data)
    assert response.status_code == 422
    assert 'id="key_prefix-error">must be 2-31 letters' in response.get_data(as_text=True)


def test_unused_tier_can_be_deleted(app: Flask, admin_client):
    admin_client.post("/admin/tiers/new", data={**TIER_FORM, "csrf_token": token(admin_client)})
    with app.app_context():
        tier_id = db.session.query(Tier).filter_by(name="team").one().id
    admin_client.post(f"/admin/tiers/{tier_id}/delete", data={"csrf_token": token(admin_client)})
    with app.app_context():
        assert db.session.get(Tier, tier_id) is None


def _make_backend(admin_client, **overrides) -> int:
    response = admin_client.post("/admin/backends/new",
                                 data={**BACKEND_FORM, **overrides, "csrf_token": token(admin_client)})
    assert response.status_code == 302, response.get_data(as_text=True)
    return int(response.headers["Location"].rsplit("/", 1)[1])


def test_backend_crud(app: Flask, admin_client):
    backend_id = _make_backend(admin_client)
    with app.app_context():
        backend = db.session.get(Backend, backend_id)
        assert backend.base_url == "http://127.0.0.1:9" and backend.weight == 2
        assert backend.models == ["gpt-4o", "gpt-4o-*"] and backend.model_aliases == {"fast": "gpt-4o-mini"}
        assert backend.prices == {"gpt-4o": {"input": 2.5, "output": 10.0}} and backend.connect_timeout == 1.5
    assert "fast → gpt-4o-mini" in admin_client.get(f"/admin/backends/{backend_id}").get_data(as_text=True)
    edit = admin_client.get(f"/admin/backends/{backend_id}/edit").get_data(as_text=True)
    assert "gpt-4o = 2.5 10.0" in edit
    data = {**BACKEND_FORM, "enabled": "", "csrf_token": token(admin_client)}
    admin_client.post(f"/admin/backends/{backend_id}/edit", data=data)
    with app.app_context():
        assert db.session.get(Backend, backend_id).enabled is False
    admin_client.post(f"/admin/backends/{backend_id}/delete", data={"csrf_token": token(admin_client)})
    with app.app_context():
        assert db.session.get(Backend, backend_id) is None


def test_relay_cookies_is_set_from_the_backend_form_and_shown(app: Flask, admin_client):
    backend_id = _make_backend(admin_client, kind="http", relay_cookies="y")
    with app.app_context():
        assert db.session.get(Backend, backend_id).relay_cookies is True
    assert "Relay cookies</dt><dd>yes" in admin_client.get(f"/admin/backends/{backend_id}").get_data(as_text=True)
    edit = admin_client.get(f"/admin/backends/{backend_id}/edit").get_data(as_text=True)
    assert '<input checked id="relay_cookies" name="relay_cookies" type="checkbox" value="y">' in edit


def test_backend_form_errors_are_inline(admin_client):
    data = {**BACKEND_FORM, "base_url": "ftp://x", "prices": "gpt-4o = cheap", "csrf_token": token(admin_client)}
    html = admin_client.post("/admin/backends/new", data=data).get_data(as_text=True)
    assert 'id="prices-error">each line must be: model = input-price output-price' in html
    data["prices"] = ""
    html = admin_client.post("/admin/backends/new", data=data).get_data(as_text=True)
    assert 'id="base_url-error">must be an http:// or https:// URL' in html


def test_upstream_secret_is_write_only_and_masked(app: Flask, admin_client):
    backend_id = _make_backend(admin_client)
    response = admin_client.post(f"/admin/backends/{backend_id}",
                                 data={"secret": SECRET, "label": "main", "weight": "3",
                                       "csrf_token": token(admin_client)}, follow_redirects=True)
    html = response.get_data(as_text=True)
    assert "****9876" in html and SECRET not in html
    with app.app_context():
        key = db.session.query(UpstreamKey).one()
        assert SECRET not in key.secret_encrypted and key.weight == 3
        key_id = key.id
    edit = admin_client.get(f"/admin/upstream-keys/{key_id}/edit").get_data(as_text=True)
    assert SECRET not in edit
    assert SECRET not in admin_client.get("/admin/audit").get_data(as_text=True)


def test_missing_secret_is_an_inline_error(admin_client):
    backend_id = _make_backend(admin_client)
    response = admin_client.post(f"/admin/backends/{backend_id}",
                                 data={"secret": "", "csrf_token": token(admin_client)})
    assert response.status_code == 422
    assert 'id="secret-error">This field is required' in response.get_data(as_text=True)


def test_upstream_key_edit_reset_delete(app: Flask, admin_client):
    backend_id = _make_backend(admin_client)
    admin_client.post(f"/admin/backends/{backend_id}", data={"secret": SECRET, "csrf_token": token(admin_client)})
    with app.app_context():
        key = db.session.query(UpstreamKey).one()
        key.state, key.last_error = "disabled", "upstream said 401"
        db.session.commit()
        key_id = key.id
    page = admin_client.get(f"/admin/backends/{backend_id}").get_data(as_text=True)
    assert "upstream said 401" in page and "state-disabled" in page
    admin_client.post(f"/admin/upstream-keys/{key_id}/edit",
                      data={"label": "renamed", "weight": "5", "enabled": "y", "secret": "",
                            "csrf_token": token(admin_client)})
    admin_client.post(f"/admin/upstream-keys/{key_id}/reset", data={"csrf_token": token(admin_client)})
    with app.app_context():
        key = db.session.get(UpstreamKey, key_id)
        assert (key.label, key.weight, key.state, key.last4) == ("renamed", 5, "healthy", "9876")
    admin_client.post(f"/admin/upstream-keys/{key_id}/delete", data={"csrf_token": token(admin_client)})
    with app.app_context():
        assert db.session.get(UpstreamKey, key_id) is None


@pytest.fixture
def fake_upstream() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A real HTTP server that records request headers and answers with a body the
    portal must never show."""
    seen: list[dict[str, str]] = []

    @Request.application
    def app(request: Request) -> Response:
        seen.append({"path": request.path, **{k.lower(): v for k, v in request.headers.items()}})
        status = 200 if request.path == "/v1/models" else 503
        return Response("UPSTREAM-BODY-MUST-NOT-LEAK " + request.headers.get("Authorization", ""), status=status)

    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    thread.join(5)


def test_connection_test_reports_status_and_latency_only(app: Flask, admin_client, fake_upstream):
    base_url, seen = fake_upstream
    backend_id = _make_backend(admin_client, base_url=base_url + "/v1")
    admin_client.post(f"/admin/backends/{backend_id}", data={"secret": SECRET, "csrf_token": token(admin_client)})
    with app.app_context():
        key_id = db.session.query(UpstreamKey).one().id
    response = admin_client.post(f"/admin/upstream-keys/{key_id}/test", data={"csrf_token": token(admin_client)},
                                 follow_redirects=True)
    html = response.get_data(as_text=True)
    assert "****9876: HTTP 200 in" in html
    assert "UPSTREAM-BODY" not in html and SECRET not in html
    assert seen[0]["path"] == "/v1/models" and seen[0]["authorization"] == f"Bearer {SECRET}"
    with app.app_context():
        entry = db.session.query(AuditLog).filter_by(action="upstream_key.test").one()
        assert entry.detail["status"] == 200 and SECRET not in str(entry.detail)


def test_connection_test_uses_the_health_path_and_anthropic_headers(app: Flask, admin_client, fake_upstream):
    base_url, seen = fake_upstream
    backend_id = _make_backend(admin_client, base_url=base_url, kind="anthropic", health_check_path="/healthz")
    admin_client.post(f"/admin/backends/{backend_id}", data={"secret": SECRET, "csrf_token": token(admin_client)})
    with app.app_context():
        key_id = db.session.query(UpstreamKey).one().id
    html = admin_client.post(f"/admin/upstream-keys/{key_id}/test", data={"csrf_token": token(admin_client)},
                             follow_redirects=True).get_data(as_text=True)
    assert "HTTP 503 in" in html and "UPSTREAM-BODY" not in html
    assert seen[0]["path"] == "/healthz" and seen[0]["x-api-key"] == SECRET
    assert "anthropic-version" in seen[0] and "authorization" not in seen[0]


def test_connection_test_reports_a_refused_connection(app: Flask, admin_client):
    backend_id = _make_backend(admin_client, base_url="http://127.0.0.1:9")
    admin_client.post(f"/admin/backends/{backend_id}", data={"secret": SECRET, "csrf_token": token(admin_client)})
    with app.app_context():
        key_id = db.session.query(UpstreamKey).one().id
    html = admin_client.post(f"/admin/upstream-keys/{key_id}/test", data={"csrf_token": token(admin_client)},
                             follow_redirects=True).get_data(as_text=True)
    assert "connection failed (ConnectionError)" in html


def test_connection_test_obeys_the_private_address_deny_list(app: Flask, admin_client, fake_upstream):
    base_url, seen = fake_upstream
    app.config["BLOCK_PRIVATE_UPSTREAMS"] = True
    backend_id = _make_backend(admin_client, base_url=base_url + "/v1")
    admin_client.post(f"/admin/backends/{backend_id}", data={"secret": SECRET, "csrf_token": token(admin_client)})
    with app.app_context():
        key_id = db.session.query(UpstreamKey).one().id
    html = admin_client.post(f"/admin/upstream-keys/{key_id}/test", data={"csrf_token": token(admin_client)},
                             follow_redirects=True).get_data(as_text=True)
    assert "connection failed" in html and seen == []
