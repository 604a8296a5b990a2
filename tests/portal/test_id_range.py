"""Every route that takes a row id answers 404 for an id no INTEGER column can hold.

On PostgreSQL the driver binds the id as an INTEGER, so an unguarded lookup of
2147483648 fails inside the database and used to answer 500 on the portal (the admin
API guarded the range, the portal did not). The routes are read from the app's URL
map, so a route added later is covered without editing this test. Runs on SQLite and
PostgreSQL alike; the PostgreSQL pass is the one that caught the 500."""
from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.portal.helpers import token

TOO_LARGE = (2**31, 2**63)
MODEL_OF_SEGMENT = {"tiers": "tier", "users": "user", "backends": "backend", "upstream-keys": "upstreamkey",
                    "keys": "apikey"}


def _id_routes(app: Flask, prefix: str) -> list[tuple[str, str]]:
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(prefix) and "<int:" in rule.rule:
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                routes.append((method, rule.rule))
    return routes


def _path(rule: str, ident: int) -> str:
    return re.sub(r"<int:\w+>", str(ident), rule)


def test_the_portal_answers_404_not_500_for_an_id_beyond_the_integer_range(app: Flask,
                                                                          admin_client: FlaskClient) -> None:
    routes = _id_routes(app, "/admin/")
    assert len(routes) >= 15  # the URL map was read, not an empty list
    csrf = token(admin_client)
    for ident in TOO_LARGE:
        for method, rule in routes:
            response = admin_client.open(_path(rule, ident), method=method, data={"csrf_token": csrf})
            assert response.status_code == 404, (method, rule, ident)
            assert "text/html" in response.content_type
    assert admin_client.get("/admin/users/2147483648").status_code == 404


def test_the_admin_api_answers_json_404_for_an_id_beyond_the_integer_range(app: Flask, client: FlaskClient,
                                                                          admin_headers: dict[str, str]) -> None:
    routes = _id_routes(app, "/api/admin/")
    assert len(routes) >= 15
    for ident in TOO_LARGE:
        for method, rule in routes:
            response = client.open(_path(rule, ident), method=method, json={}, headers=admin_headers)
            assert response.status_code == 404, (method, rule, ident)
            noun = MODEL_OF_SEGMENT[rule.split("/")[3]]
            assert response.get_json()["error"] == {"code": "not_found", "message": f"No {noun} with id {ident}"}


@pytest.mark.parametrize("path", ["/api/admin/keys?user_id=2147483648",
                                  "/api/admin/upstream-keys?backend_id=2147483648"])
def test_list_filters_with_an_id_beyond_the_integer_range_match_nothing(client: FlaskClient, path: str,
                                                                      admin_headers: dict[str, str]) -> None:
    response = client.get(path, headers=admin_headers)
    assert response.status_code == 200
    assert response.get_json()["total"] == 0
