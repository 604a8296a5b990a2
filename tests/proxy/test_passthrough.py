"""The generic HTTP pass-through: bodies stream both ways with bytes counted, and the
path can never escape the backend's base path."""
from __future__ import annotations

import http.client

import pytest
import requests


@pytest.fixture
def http_backend(deployment):
    backend = deployment.admin.post("/backends", {"name": "images", "kind": "http",
                                                  "base_url": deployment.upstream.url + "/echo/base"})
    deployment.admin.post(f"/backends/{backend['id']}/keys", {"secret": "http-backend-secret-0001"})
    return backend


def test_multipart_upload_streams_through_and_bytes_are_counted(deployment, http_backend):
    payload = b"\x89PNG" + bytes(range(256)) * 4096  # ~1 MiB of binary
    response = requests.post(f"{deployment.url}/proxy/images/upload/cat.png?size=large",
                             headers={"Authorization": f"Bearer {deployment.key}"},
                             files={"file": ("cat.png", payload, "image/png")}, timeout=20)
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["path"] == "/echo/base/upload/cat.png" and echoed["query"] == "size=large"
    assert echoed["body_len"] > len(payload)  # multipart framing included
    [sent] = deployment.upstream.requests()
    assert sent["headers"]["authorization"] == "Bearer http-backend-secret-0001"
    assert echoed["headers"]["authorization"] == "Bearer [redacted]"  # the echo of our secret is scrubbed
    assert deployment.key not in response.text
    [row] = deployment.wait_for_logs(1)
    assert row["bytes_in"] == echoed["body_len"]
    # counted as the upstream sent them: the echoed secret, not its shorter redaction
    assert row["bytes_out"] == len(response.content) - len("[redacted]") + len("http-backend-secret-0001")
    assert row["route"] == "/proxy/images" and row["status"] == 200
    usage = deployment.admin.get(f"/users/{deployment.user_id}")["usage"]
    assert usage["bytes"] == row["bytes_in"] + row["bytes_out"]


def test_large_download_streams_back(deployment):
    backend = deployment.admin.post("/backends", {"name": "blobs", "kind": "http", "base_url": deployment.upstream.url})
    assert backend["id"]
    response = requests.get(f"{deployment.url}/proxy/blobs/bytes/3000000",
                            headers={"X-API-Key": deployment.key}, timeout=20, stream=True)
    total = sum(len(c) for c in response.iter_content(65536))
    assert response.status_code == 200 and total == 3_000_000
    [row] = deployment.wait_for_logs(1)
    assert row["bytes_out"] == 3_000_000


@pytest.mark.parametrize("path", [
    "/proxy/images/../secret", "/proxy/images/%2e%2e/secret", "/proxy/images/a/%2E%2E/%2e%2e/secret",
    "/proxy/images//evil.example/x", "/proxy/images/a%2f..%2f..%2fsecret", "/proxy/images/a%00b",
    "/proxy/images/a\\..\\b", "/proxy/images/./x",
])
def test_path_traversal_is_refused_without_an_upstream_call(deployment, http_backend, path):
    host, port = deployment.url.replace("http://", "").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.putheader("Authorization", f"Bearer {deployment.key}")
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    assert response.status in (400, 404), (path, response.status, body)
    assert deployment.upstream.requests() == []


def test_unknown_or_llm_backend_is_404_in_generic_shape(deployment):
    response = requests.get(f"{deployment.url}/proxy/fake-openai/models",
                            headers={"Authorization": f"Bearer {deployment.key}"}, timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "backend_not_found"


def test_passthrough_requires_a_key(deployment, http_backend):
    response = requests.get(f"{deployment.url}/proxy/images/x", timeout=10)
    assert response.status_code == 401 and set(response.json()["error"]) == {"code", "message"}
    assert deployment.upstream.requests() == []


def test_a_client_header_that_cannot_be_forwarded_is_a_400_and_never_counts_against_the_backend_key(
        deployment, http_backend):
    # gunicorn lets obs-text through; a leading NBSP is Unicode whitespace to requests,
    # which refuses to send it. Four tries: more than the 3 failures that mark a key unhealthy.
    for _ in range(4):
        response = requests.get(f"{deployment.url}/proxy/images/x", timeout=10,
                                headers={"Authorization": f"Bearer {deployment.key}", "X-Custom": b"\xa0hello"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_header"
    [key] = deployment.admin.get("/upstream-keys", backend_id=http_backend["id"])["items"]
    assert (key["state"], key["consecutive_failures"], key["last_error"]) == ("healthy", 0, None)
    rows = deployment.wait_for_logs(4)
    assert {(r["status"], r["outcome"]) for r in rows} == {(400, "rejected")}
    ok = requests.get(f"{deployment.url}/proxy/images/x", headers={"Authorization": f"Bearer {deployment.key}"},
                      timeout=10)
    assert ok.status_code == 200
    assert deployment.upstream.requests()[-1]["headers"]["authorization"] == "Bearer http-backend-secret-0001"


def test_a_backend_whose_every_key_is_disabled_gets_503_and_is_never_called_without_its_credential(
        deployment, http_backend):
    [key] = deployment.admin.get("/upstream-keys", backend_id=http_backend["id"])["items"]
    deployment.admin.patch(f"/upstream-keys/{key['id']}", {"enabled": False})
    deployment.upstream.reset()

    response = requests.get(f"{deployment.url}/proxy/images/x", headers={"Authorization": f"Bearer {deployment.key}"},
                            timeout=10)

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "no_healthy_upstream"
    assert deployment.upstream.requests() == []  # not called at all, so never without its credential
    [row] = deployment.wait_for_logs(1)
    assert (row["status"], row["outcome"]) == (503, "rejected")


def test_a_backend_without_credentials_is_called_without_any(deployment):
    deployment.admin.post("/backends", {"name": "open", "kind": "http", "base_url": deployment.upstream.url + "/echo"})
    response = requests.get(f"{deployment.url}/proxy/open/x", headers={"Authorization": f"Bearer {deployment.key}"},
                            timeout=10)
    assert response.status_code == 200, response.text
    assert "authorization" not in response.json()["headers"]
