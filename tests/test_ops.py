from gateway import __version__


def test_health_answers_version_and_counts(client, admin_headers):
    backend = client.post("/api/admin/backends", json={"name": "main", "kind": "openai",
                                                       "base_url": "https://a.test"}, headers=admin_headers)
    client.post(f"/api/admin/backends/{backend.get_json()['id']}/keys", json={"secret": "sk-upstream-0123456789"},
                headers=admin_headers)
    client.post("/api/admin/users", json={"name": "alice"}, headers=admin_headers)

    response = client.get("/health")

    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok", "version": __version__, "backends": 1, "users": 1,
        "upstream_keys": {"healthy": 1, "cooling_down": 0, "unhealthy": 0, "disabled": 0},
    }


def test_ready_warns_when_a_loopback_proxy_forwards_while_no_proxy_is_trusted(client):
    """Issue 15, finding 10: behind nginx with TRUSTED_PROXY_COUNT=0 every client is one
    address; /ready says so as a warning (still 200, still "ready")."""
    assert client.get("/ready").get_json()["warnings"] == []
    client.get("/health", headers={"X-Forwarded-For": "198.51.100.7"})   # the test client's peer is 127.0.0.1
    client.get("/health", headers={"X-Forwarded-For": "198.51.100.8"})
    response = client.get("/ready")
    assert response.status_code == 200 and response.get_json()["status"] == "ready"
    [warning] = response.get_json()["warnings"]
    assert warning["code"] == "untrusted_forwarding" and warning["requests"] == 2
    assert "TRUSTED_PROXY_COUNT" in warning["message"]


def test_ready_answers_200_when_the_database_is_reachable(client):
    response = client.get("/ready")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "checks": {"database": "ok", "limiter_storage": "ok"},
                                   "warnings": []}
