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


def test_ready_answers_200_when_the_database_is_reachable(client):
    response = client.get("/ready")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "checks": {"database": "ok", "limiter_storage": "ok"}}
