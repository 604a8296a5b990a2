"""Helpers for driving the portal's forms from the Flask test client."""
from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient

ADMIN_PASSWORD = "correct horse battery"
VIEWER_PASSWORD = "viewer horse battery"


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def sign_in(client: FlaskClient, username: str, password: str) -> Any:
    page = client.get("/admin/login")
    return client.post("/admin/login", data={"username": username, "password": password,
                                             "csrf_token": csrf_from(page.get_data(as_text=True))})


def token(client: FlaskClient, path: str = "/admin/") -> str:
    """A valid CSRF token for ``client``'s session, read from a page it can see."""
    return csrf_from(client.get(path).get_data(as_text=True))
