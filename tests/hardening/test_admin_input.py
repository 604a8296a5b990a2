"""Hostile text in every admin-entered field: the admin API either refuses it (422 with
the field named) or stores it exactly, never 500; and whatever is stored is escaped on
every portal page an admin can open."""
from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from flask import Flask

from gateway import create_app
from tests.conftest import ADMIN_TOKEN, make_env

from .conftest import World

SCRIPT = "<script>alert('kg')</script>"
ATTR = "\"><img src=x onerror=alert('kg')>"
ODDITIES = {
    "script": SCRIPT,
    "attribute": ATTR,
    "lone-surrogate": "a\ud800b",
    "zero-width": "a\u200bb\u200d\ufeffc",
    "rtl-override": "abc\u202eevil\u202c",
    "nul": "a\x00b",
    "crlf": "a\r\nSet-Cookie: x=1",
    "combining": "e" + "\u0301" * 50,
    "emoji": "\U0001f600\U0001f4a9",
}
PORTAL_PASSWORD = "hardening-admin-password"


def _admin_call(world: World, method: str, path: str, body: dict[str, Any]) -> Any:
    response = world.http().request(method, world.url + "/api/admin" + path, json=body,
                                    headers={"X-Admin-Key": ADMIN_TOKEN})
    assert response.status_code in (200, 201, 422), (path, body, response.status_code, response.text[:300])
    assert "Traceback" not in response.text
    if response.status_code == 422:
        assert response.json()["error"]["code"] == "validation_error"
    return response


def _stored_or_refused(response: Any, field: str, value: str, read_back: Any) -> None:
    if response.status_code == 422:
        assert field in response.text
        return
    stored = read_back(response.json())
    assert stored == value.strip(), (field, stored, value)


@pytest.mark.parametrize("oddity", list(ODDITIES))
def test_every_admin_text_field_refuses_or_stores_oddities_exactly(world: World, oddity: str) -> None:
    value = ODDITIES[oddity]
    suffix = uuid.uuid4().hex[:6]
    user = world.admin.post("/users", {"name": f"u-{suffix}", "tier": "pro"})
    for field in ("name", "email", "notes"):
        response = _admin_call(world, "PATCH", f"/users/{user['id']}", {field: value})
        _stored_or_refused(response, field, value, lambda body, f=field: body[f])
    response = _admin_call(world, "POST", f"/users/{user['id']}/keys", {"label": value})
    _stored_or_refused(response, "label", value, lambda body: body["label"])
    response = _admin_call(world, "POST", "/keys", {"name": value, "tier": "pro"})
    if response.status_code != 422:
        assert world.admin.get(f"/users/{response.json()['user_id']}")["name"] == value.strip()
    for field in ("name", "key_prefix"):
        body = {"name": f"t{suffix}", "key_prefix": f"sk-{suffix}-", "rpm": 10, field: value}
        response = _admin_call(world, "POST", "/tiers", body)
        _stored_or_refused(response, field, value, lambda b, f=field: b[f])
    backend_body = {"name": f"b-{suffix}", "kind": "openai", "base_url": world.upstream.url + "/v1",
                    "models": [f"m-{suffix}"]}
    for field in ("name", "models", "model_aliases", "health_check_path"):
        body = dict(backend_body, name=f"b-{suffix}-{field.replace('_', '')}")
        body[field] = {"alias": value} if field == "model_aliases" else [value] if field == "models" else value
        response = _admin_call(world, "POST", "/backends", body)
    backend = world.admin.post("/backends", dict(backend_body, name=f"b-{suffix}-keys"))
    response = _admin_call(world, "POST", f"/backends/{backend['id']}/keys", {"secret": "sk-x-" + suffix,
                                                                              "label": value})
    _stored_or_refused(response, "label", value, lambda body: body["label"])


@pytest.fixture(scope="module")
def portal_app(world: World, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """An app on the shared database, used only to create a portal admin the way
    ``flask create-admin`` does."""
    app = create_app(env=make_env(world.database_url, tmp_path_factory.mktemp("portal") / "instance"))
    with app.app_context():
        from gateway.extensions import db
        from gateway.services.admins import create as create_admin
        from gateway.transaction import committed

        with committed():
            create_admin(f"hardening-{uuid.uuid4().hex[:6]}", PORTAL_PASSWORD)
        db.session.remove()
    return app


def _sign_in(world: World, app: Flask) -> Any:
    with app.app_context():
        from sqlalchemy import select

        from gateway.extensions import db
        from gateway.models import Admin

        username = db.session.scalars(select(Admin.username).where(Admin.username.like("hardening-%"))).first()
        db.session.remove()
    session = world.http()
    page = session.get(world.url + "/admin/login").text
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    answer = session.post(world.url + "/admin/login", data={"username": username, "password": PORTAL_PASSWORD,
                                                            "csrf_token": token}, allow_redirects=False)
    assert answer.status_code == 302, answer.text[:300]
    return session


def test_html_in_names_and_labels_is_escaped_on_every_portal_page(world: World, portal_app: Flask) -> None:
    suffix = uuid.uuid4().hex[:6]
    user = world.admin.post("/users", {"name": SCRIPT, "email": f"x{suffix}@example.com", "tier": "pro",
                                       "notes": ATTR})
    key = world.admin.post(f"/users/{user['id']}/keys", {"label": ATTR})
    backend = world.admin.post("/backends", {"name": f"html-{suffix}", "kind": "openai",
                                             "base_url": world.upstream.url + "/v1", "models": [f"h-{suffix}"],
                                             "model_aliases": {"x": SCRIPT}})
    upstream_key = world.admin.post(f"/backends/{backend['id']}/keys", {"secret": "sk-x-" + suffix, "label": SCRIPT})
    tier = world.admin.post("/tiers", {"name": f"t{suffix}", "key_prefix": f"sk-{suffix}-", "rpm": 5})
    ids = {"user_id": user["id"], "key_id": key["id"], "backend_id": backend["id"],
           "tier_id": tier["id"]}
    session = _sign_in(world, portal_app)
    pages = 0
    for rule in portal_app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or "GET" not in rule.methods or rule.endpoint == "portal.logout":
            continue
        path = rule.rule
        if path.startswith("/admin/upstream-keys/"):
            path = path.replace("<int:key_id>", str(upstream_key["id"]))
        for name, value in ids.items():
            path = path.replace(f"<int:{name}>", str(value))
        if "<" in path:
            continue
        response = session.get(world.url + path)
        assert response.status_code in (200, 302), (path, response.status_code)
        assert "Traceback" not in response.text
        assert "<script>alert" not in response.text, path
        assert "<img src=x" not in response.text, path
        pages += 1
    assert pages >= 10
    users_page = session.get(world.url + "/admin/users").text
    assert "&lt;script&gt;alert(" in users_page
