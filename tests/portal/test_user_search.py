"""The portal's user list and the admin API's ``GET /users`` select the same users for
the same query (one search rule, ``services.users.search``)."""
from __future__ import annotations

import re

from flask.testing import FlaskClient

from tests.portal.helpers import token


def _portal_ids(admin_client: FlaskClient, **args: str) -> set[int]:
    page = admin_client.get("/admin/users", query_string=args).get_data(as_text=True)
    return {int(i) for i in re.findall(r'href="/admin/users/(\d+)"', page)}


def _api_ids(client: FlaskClient, headers: dict[str, str], **args: str) -> set[int]:
    return {u["id"] for u in client.get("/api/admin/users", query_string=args, headers=headers).get_json()["items"]}


def test_portal_and_admin_api_find_the_same_users(admin_client, client, admin_headers, make_user) -> None:
    dana = make_user("Dana", email="dana@corp.example")
    gone = make_user("Dana Gone", email="gone@corp.example")
    sus = make_user("Sam", email="sam@other.example", status="suspended")
    csrf = token(admin_client)
    assert admin_client.post(f"/admin/users/{gone}/delete", data={"csrf_token": csrf}).status_code == 302

    cases = [{}, {"q": "dana"}, {"q": "  CORP.example "}, {"status": "deleted"}, {"status": "suspended"},
             {"q": "dana", "status": "deleted"}, {"q": "nobody"}]
    expected = [{dana, sus}, {dana}, {dana}, {gone}, {sus}, {gone}, set()]
    for args, want in zip(cases, expected, strict=True):
        assert _api_ids(client, admin_headers, **args) == want, args
        assert _portal_ids(admin_client, **args) == want, args
