"""A client-chosen X-Request-ID equal to one in flight (issue 15, finding 11): both
requests are served and both get a request-log row; the client's id comes back in the
response header, and the rows stay recognisable by it."""
from __future__ import annotations

import threading

import requests

from tests.fixtures.deployment import Deployment


def test_two_concurrent_requests_with_the_same_request_id_both_succeed_and_both_have_rows(
        deployment: Deployment) -> None:
    body = {"model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": "[[delay:1]] hello there"}]}
    headers = {"Authorization": f"Bearer {deployment.key}", "X-Request-ID": "client-chosen-id-15"}
    results: list[requests.Response] = []

    def ask() -> None:
        results.append(requests.post(deployment.url + "/v1/chat/completions", json=body, headers=headers,
                                     timeout=30))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in results) == [200, 200], [r.text for r in results]
    assert all(r.headers["X-Request-ID"] == "client-chosen-id-15" for r in results)
    rows = deployment.wait_for_logs(2)
    assert len(rows) == 2
    ids = {row["request_id"] for row in rows}
    assert len(ids) == 2 and all(rid.startswith("client-chosen-id-15") for rid in ids), ids
    assert {row["status"] for row in rows} == {200}
