"""Clients warm up with ``HEAD /`` / ``GET /`` and give up on a 404 only when it carries
a non-null ``code`` (Codex retries an error without one): both hold in every family's
error shape (issue 16). Plus the stored-response pointers age out with the logs."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from gateway.extensions import db
from gateway.models import StoredResponse
from gateway.retention import prune_request_logs
from gateway.timeutil import utcnow


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_root_answers_200_for_api_clients_and_browsers(client, method):
    api = client.open("/", method=method, headers={"Accept": "*/*"})
    browser = client.open("/", method=method, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert (api.status_code, browser.status_code) == (200, 200)
    assert api.content_type == "application/json" and browser.content_type.startswith("text/html")
    if method == "GET":
        assert api.get_json()["status"] == "ok" and b'href="/admin/"' in browser.data


@pytest.mark.parametrize("path, code", [("/v1/nothing-here", "not_found"), ("/v1/responses/x/y/z", "not_found"),
                                        ("/nothing-here", "not_found"), ("/api/admin/nothing", "not_found")])
def test_an_unknown_route_is_404_with_a_non_null_code(client, path, code):
    response = client.post(path, json={})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == code


def test_an_unknown_openai_route_keeps_the_openai_shape(client):
    error = client.get("/v1/nothing-here").get_json()["error"]
    assert error == {"message": "No route for GET /v1/nothing-here", "type": "not_found_error",
                     "code": "not_found", "param": None}


def test_a_wrong_method_is_405_with_a_code(client):
    response = client.put("/v1/responses")
    assert response.status_code == 405 and response.get_json()["error"]["code"] == "method_not_allowed"


def test_stored_responses_are_pruned_with_the_request_logs(app):
    now = utcnow()
    rows = [{"response_id": f"resp_old{i}", "backend_id": 1, "upstream_key_id": 1, "user_id": 1, "key_id": 1,
             "created_at": now - timedelta(days=91)} for i in range(3)]
    rows.append({"response_id": "resp_new", "backend_id": 1, "upstream_key_id": 1, "user_id": 1, "key_id": 1,
                 "created_at": now - timedelta(days=1)})
    with app.app_context():
        db.session.execute(insert(StoredResponse), rows)
        db.session.commit()
        assert prune_request_logs(db.engine, 90, batch_size=2) == 0  # the count is of request logs only
        assert db.session.scalars(select(StoredResponse.response_id)).all() == ["resp_new"]
