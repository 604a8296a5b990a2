"""One verdict for a health-check answer, shared by the background prober and the
portal's test-connection (``prober.verdict``): 2xx/3xx success, 401/403/429/5xx
failure, any other 4xx inconclusive. Both are driven against a real HTTP server that
answers the status named in the path, so the same answer is judged by both."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from gateway.extensions import db
from gateway.models import UpstreamKey
from gateway.proxy import prober
from tests.portal.helpers import token

STATUSES = {200: True, 302: True, 401: False, 403: False, 429: False, 500: False, 503: False,
            404: None, 405: None, 422: None}


@pytest.fixture
def status_server() -> Iterator[str]:
    """Answers ``/status/<code>`` with that status (and a body nobody may show)."""

    @Request.application
    def answer(request: Request) -> Response:
        code = int(request.path.rsplit("/", 1)[1])
        headers = {"Location": "http://127.0.0.1:9/elsewhere"} if 300 <= code < 400 else {}
        return Response("BODY-NOT-SHOWN", status=code, headers=headers)

    server = make_server("127.0.0.1", 0, answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


def _backend_key(client: Any, admin_headers: dict[str, str], base_url: str, code: int) -> int:
    backend = client.post("/api/admin/backends", headers=admin_headers, json={
        "name": f"status-{code}", "kind": "openai", "base_url": base_url, "models": [f"m-{code}"],
        "health_check_path": f"/status/{code}"}).get_json()
    key = client.post(f"/api/admin/backends/{backend['id']}/keys", headers=admin_headers,
                      json={"secret": f"sk-upstream-verdict-{code}-0123456789"}).get_json()
    return int(key["id"])


def test_the_rule_itself():
    assert {code: prober.verdict(code) for code in STATUSES} == STATUSES
    assert prober.verdict(204) is True and prober.verdict(399) is True
    assert prober.verdict(400) is None and prober.verdict(599) is False


def test_the_prober_and_the_portal_judge_the_same_answers_alike(app: Flask, client: Any, admin_client: Any,
                                                               admin_headers: dict[str, str], status_server: str):
    keys = {code: _backend_key(client, admin_headers, status_server, code) for code in STATUSES}
    with app.app_context():
        db.session.execute(update(UpstreamKey).values(state="unhealthy"))  # due for a probe
        db.session.commit()
    judged = {result.key_id: result.ok for result in prober.run_round(app)}
    assert {code: judged[key_id] for code, key_id in keys.items()} == STATUSES

    shown = {True: ("ok", "success"), False: ("failed", "error"), None: ("inconclusive", "warning")}
    for code, key_id in keys.items():
        html = admin_client.post(f"/admin/upstream-keys/{key_id}/test", data={"csrf_token": token(admin_client)},
                                 follow_redirects=True).get_data(as_text=True)
        word, category = shown[STATUSES[code]]
        assert f"HTTP {code} in" in html and f"({word})" in html, (code, html)
        assert f'class="flash {category}"' in html
        assert "BODY-NOT-SHOWN" not in html
