from . import factories

TIER_FIELDS = {"id", "name", "key_prefix", "rpm", "rpd", "tpm", "default_token_quota", "default_request_quota",
               "default_byte_quota", "default_quota_period", "created_at"}


def test_default_tiers_are_listed_newest_first_with_pagination_metadata(api):
    response = api.get("/tiers")

    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"items", "total", "page", "page_size"}
    assert (body["total"], body["page"], body["page_size"]) == (2, 1, 50)
    assert [(t["name"], t["key_prefix"], t["rpm"]) for t in body["items"]] == [("pro", "sk-pro-", 120),
                                                                              ("dev", "sk-dev-", 30)]


def test_create_tier_answers_201_with_every_contract_field(api):
    response = api.post("/tiers", {"name": "team", "key_prefix": "sk-team-", "rpm": 60,
                                   "default_token_quota": 100000, "default_request_quota": 500,
                                   "default_quota_period": "daily"})

    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == TIER_FIELDS
    assert {k: v for k, v in body.items() if k not in ("id", "created_at")} == {
        "name": "team", "key_prefix": "sk-team-", "rpm": 60, "rpd": None, "tpm": None,
        "default_token_quota": 100000, "default_request_quota": 500, "default_byte_quota": None,
        "default_quota_period": "daily",
    }
    assert body["created_at"].endswith("Z")
    assert api.get(f"/tiers/{body['id']}").get_json() == body


def test_patch_tier_changes_only_the_given_fields(api):
    tier = factories.tier(api, rpm=60)

    response = api.patch(f"/tiers/{tier['id']}", {"rpm": 90, "default_token_quota": None})

    assert response.status_code == 200
    assert response.get_json() == {**tier, "rpm": 90, "default_token_quota": None}


def test_delete_unused_tier_removes_it(api):
    tier = factories.tier(api)

    response = api.delete(f"/tiers/{tier['id']}")

    assert response.status_code == 200
    assert response.get_json() == {"deleted": True, "id": tier["id"]}
    assert api.get(f"/tiers/{tier['id']}").status_code == 404
    assert api.get("/tiers").get_json()["total"] == 2


def test_delete_tier_in_use_is_refused_with_the_tier_field(api):
    tier = factories.tier(api)
    factories.user(api, tier=tier["name"])

    response = api.delete(f"/tiers/{tier['id']}")

    assert response.status_code == 422
    assert list(response.get_json()["error"]["fields"]) == ["tier"]
    assert api.get(f"/tiers/{tier['id']}").status_code == 200


def test_create_tier_with_bad_fields_answers_422_naming_each_field(api):
    response = api.post("/tiers", {"name": "bad name", "rpm": 0, "default_quota_period": "weekly"})

    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert set(error["fields"]) == {"name", "key_prefix", "rpm", "default_quota_period"}


def test_tier_key_prefix_must_end_with_a_dash(api):
    response = api.post("/tiers", {"name": "team", "key_prefix": "sk_team"})

    assert response.status_code == 422
    assert list(response.get_json()["error"]["fields"]) == ["key_prefix"]


def test_tier_name_and_prefix_must_be_unique(api):
    response = api.post("/tiers", {"name": "dev", "key_prefix": "sk-pro-"})

    assert response.status_code == 422
    assert set(response.get_json()["error"]["fields"]) == {"name", "key_prefix"}


def test_unknown_tier_fields_are_rejected_and_read_only_ones_not_written(api):
    rejected = api.post("/tiers", {"name": "team", "key_prefix": "sk-team-", "colour": "red"})
    assert rejected.status_code == 422
    assert list(rejected.get_json()["error"]["fields"]) == ["colour"]

    created = api.post("/tiers", {"name": "team", "key_prefix": "sk-team-", "id": 999,
                                  "created_at": "2000-01-01T00:00:00Z"}).get_json()
    assert created["id"] != 999
    assert not created["created_at"].startswith("2000")


def test_unknown_tier_id_answers_404_on_every_method(api):
    assert api.get("/tiers/9999").status_code == 404
    assert api.patch("/tiers/9999", {"rpm": 5}).status_code == 404
    assert api.delete("/tiers/9999").status_code == 404
    assert api.get(f"/tiers/{2**70}").status_code == 404
    assert api.get("/tiers/9999").get_json() == {"error": {"code": "not_found", "message": "No tier with id 9999"}}


def test_tier_changes_are_audited(api):
    tier = factories.tier(api, name="team", key_prefix="sk-team-")
    api.patch(f"/tiers/{tier['id']}", {"rpm": 7})
    api.delete(f"/tiers/{tier['id']}")

    items = api.get("/audit").get_json()["items"]

    assert [(a["action"], a["target_type"], a["target_id"], a["actor"]) for a in items] == [
        ("tier.delete", "tier", tier["id"], "api-token-1"),
        ("tier.update", "tier", tier["id"], "api-token-1"),
        ("tier.create", "tier", tier["id"], "api-token-1"),
    ]
    assert items[1]["detail"] == {"rpm": 7}
