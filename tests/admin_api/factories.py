"""Small factories for admin-API tests: each creates one resource through the real API
(so the write path under test is the one clients use) and returns its JSON answer."""
from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from gateway.extensions import db
from gateway.models import RequestLog

_counter = itertools.count(1)


class AdminApi:
    """The test client with the admin token attached; every call answers the response."""

    def __init__(self, client: Any, headers: dict[str, str]):
        self.client = client
        self.headers = headers

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get("/api/admin" + path, query_string=params or None, headers=self.headers)

    def post(self, path: str, body: Any = None) -> Any:
        return self.client.post("/api/admin" + path, json=body if body is not None else {}, headers=self.headers)

    def patch(self, path: str, body: Any) -> Any:
        return self.client.patch("/api/admin" + path, json=body, headers=self.headers)

    def delete(self, path: str) -> Any:
        return self.client.delete("/api/admin" + path, headers=self.headers)


def _created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def tier(api: AdminApi, **fields: Any) -> dict[str, Any]:
    n = next(_counter)
    body = {"name": f"team{n}", "key_prefix": f"sk-team{n}-", "rpm": 60}
    body.update(fields)
    return _created(api.post("/tiers", body))


def user(api: AdminApi, **fields: Any) -> dict[str, Any]:
    body = {"name": f"user-{next(_counter)}", "tier": "dev"}
    body.update(fields)
    return _created(api.post("/users", body))


def key(api: AdminApi, user_id: int, **fields: Any) -> dict[str, Any]:
    """A new key for ``user_id``; the answer includes the full ``key`` (shown once)."""
    return _created(api.post(f"/users/{user_id}/keys", {"label": "laptop", **fields}))


def backend(api: AdminApi, **fields: Any) -> dict[str, Any]:
    body = {"name": f"backend-{next(_counter)}", "kind": "openai", "base_url": "https://llm.example.test/v1"}
    body.update(fields)
    return _created(api.post("/backends", body))


def upstream_key(api: AdminApi, backend_id: int, secret: str, **fields: Any) -> dict[str, Any]:
    return _created(api.post(f"/backends/{backend_id}/keys", {"secret": secret, **fields}))


def request_log(app: Any, **fields: Any) -> None:
    """Insert one request-log row directly, as the proxy path will."""
    values: dict[str, Any] = {"request_id": f"req-{next(_counter)}", "route": "/v1/chat/completions",
                              "status": 200, "created_at": datetime(2026, 11, 1, 12, 0, 0)}
    values.update(fields)
    with app.app_context():
        db.session.add(RequestLog(**values))
        db.session.commit()
