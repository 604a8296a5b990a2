def test_shortcut_creates_user_and_key_and_lists_it_masked(client, admin_headers):
    created = client.post("/api/admin/keys", json={"name": "alice", "tier": "dev", "total_tokens": 1000},
                          headers=admin_headers)
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["key"].startswith("sk-dev-")
    listed = client.get("/api/admin/keys", headers=admin_headers)
    assert listed.status_code == 200
    assert body["key"] not in listed.get_data(as_text=True)
    assert listed.get_json()["total"] == 1
