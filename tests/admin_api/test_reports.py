from datetime import datetime

import pytest

from . import factories

USAGE_KEYS = {"group_by", "since", "until", "items", "total"}


def test_logs_answer_an_empty_page_before_any_traffic(api):
    response = api.get("/logs")

    assert response.status_code == 200
    assert response.get_json() == {"items": [], "total": 0, "page": 1, "page_size": 50}


@pytest.mark.parametrize("group_by", ["user", "model", "backend", "day"])
def test_usage_answers_an_empty_report_before_any_traffic(api, group_by):
    response = api.get("/usage", group_by=group_by)

    assert response.status_code == 200
    assert response.get_json() == {"group_by": group_by, "since": None, "until": None, "items": [], "total": 0}


def test_audit_answers_a_page_of_changes_newest_first(api):
    tier = factories.tier(api)
    user = factories.user(api)

    body = api.get("/audit").get_json()

    assert (body["total"], body["page"], body["page_size"]) == (2, 1, 50)
    assert [(a["action"], a["target_id"]) for a in body["items"]] == [("user.create", user["id"]),
                                                                      ("tier.create", tier["id"])]
    assert set(body["items"][0]) == {"id", "created_at", "actor", "action", "target_type", "target_id",
                                     "detail", "ip"}
    assert body["items"][0]["ip"] == "127.0.0.1"
    assert [a["action"] for a in api.get("/audit", action="tier.create").get_json()["items"]] == ["tier.create"]


@pytest.fixture
def traffic(api, app):
    """Five request-log rows over two users, two models, two backends and two days."""
    alice, bob = factories.user(api, name="alice"), factories.user(api, name="bob")
    main, spare = factories.backend(api, name="main"), factories.backend(api, name="spare")
    day1, day2 = datetime(2026, 11, 1, 9, 30), datetime(2026, 11, 2, 23, 59)
    rows = [
        dict(user_id=alice["id"], backend_id=main["id"], model="gpt-4o", tokens_in=100, tokens_out=20,
             bytes_in=1000, bytes_out=200, cost=0.5, created_at=day1),
        dict(user_id=alice["id"], backend_id=main["id"], model="gpt-4o", tokens_in=50, tokens_out=5,
             bytes_in=10, bytes_out=20, cost=0.25, created_at=day2),
        dict(user_id=alice["id"], backend_id=spare["id"], model="claude-x", tokens_in=7, tokens_out=3,
             status=502, created_at=day2),
        dict(user_id=bob["id"], backend_id=spare["id"], model="claude-x", tokens_in=1, tokens_out=1,
             status=429, created_at=day1),
        dict(user_id=bob["id"], backend_id=main["id"], model="gpt-4o", tokens_in=2, tokens_out=2, created_at=day2),
    ]
    for row in rows:
        factories.request_log(app, **row)
    return {"alice": alice["id"], "bob": bob["id"], "main": main["id"], "spare": spare["id"]}


def test_usage_by_user_sums_tokens_requests_errors_and_cost(api, traffic):
    body = api.get("/usage", group_by="user").get_json()

    assert set(body) == USAGE_KEYS
    assert body["items"] == [
        {"user": traffic["alice"], "name": "alice", "tokens_in": 157, "tokens_out": 28, "requests": 3,
         "errors": 1, "cost": 0.75, "bytes": 1230},
        {"user": traffic["bob"], "name": "bob", "tokens_in": 3, "tokens_out": 3, "requests": 2, "errors": 1,
         "cost": None, "bytes": 0},
    ]
    assert body["total"] == 2


def test_usage_by_model_backend_and_day_gives_exact_sums(api, traffic):
    by_model = api.get("/usage", group_by="model").get_json()["items"]
    by_backend = api.get("/usage", group_by="backend").get_json()["items"]
    by_day = api.get("/usage", group_by="day").get_json()["items"]

    assert [(i["model"], i["tokens_in"], i["tokens_out"], i["requests"], i["errors"]) for i in by_model] == [
        ("claude-x", 8, 4, 2, 2), ("gpt-4o", 152, 27, 3, 0)]
    assert [(i["backend"], i["name"], i["tokens_in"], i["requests"]) for i in by_backend] == [
        (traffic["main"], "main", 152, 3), (traffic["spare"], "spare", 8, 2)]
    assert [(i["day"], i["tokens_in"], i["tokens_out"], i["requests"], i["errors"]) for i in by_day] == [
        ("2026-11-01", 101, 21, 2, 1), ("2026-11-02", 59, 10, 3, 1)]


def test_usage_since_and_until_bound_the_report(api, traffic):
    body = api.get("/usage", group_by="day", since="2026-11-02T00:00:00Z", until="2026-11-03T00:00:00Z").get_json()

    assert (body["since"], body["until"]) == ("2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z")
    assert [(i["day"], i["requests"]) for i in body["items"]] == [("2026-11-02", 3)]


def test_logs_are_newest_first_and_filtered_by_the_contract_filters(api, traffic):
    all_logs = api.get("/logs").get_json()
    statuses = [row["status"] for row in all_logs["items"]]

    assert all_logs["total"] == 5
    assert statuses == [200, 429, 502, 200, 200]
    assert api.get("/logs", user_id=traffic["bob"]).get_json()["total"] == 2
    assert api.get("/logs", model="claude-x").get_json()["total"] == 2
    assert api.get("/logs", status=502).get_json()["items"][0]["tokens_in"] == 7
    assert api.get("/logs", since="2026-11-02T00:00:00Z").get_json()["total"] == 3
    assert api.get("/logs", until="2026-11-02T00:00:00Z").get_json()["total"] == 2
    assert api.get("/logs", page_size=2, page=3).get_json()["items"][0]["status"] == 200


def test_report_parameters_are_validated_with_422(api):
    cases = [("/usage", {"group_by": "hour"}, "group_by"), ("/usage", {"since": "yesterday"}, "since"),
             ("/logs", {"until": "soon"}, "until"), ("/logs", {"user_id": "bob"}, "user_id"),
             ("/logs", {"key_id": str(2**70)}, "key_id"), ("/logs", {"page_size": 1000}, "page_size")]
    for path, params, field in cases:
        response = api.get(path, **params)
        assert response.status_code == 422, (path, params)
        assert list(response.get_json()["error"]["fields"]) == [field]
