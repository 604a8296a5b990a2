"""Issue 15, finding 11: model names with control, format or line-separator characters
are refused everywhere a model name enters - a proxied request's ``model`` (400 in the
route's error shape) and every admin field that holds model names (422 naming it)."""
from __future__ import annotations

from typing import Any

import pytest

from gateway import model_names

HOSTILE = {
    "nul": "gpt-4o\x00",
    "escape": "gpt-4o\x1b[2J",
    "c1-csi": "gpt-4o\x9b31m",
    "next-line": "gpt-4o\x85x",
    "rtl-override": "gpt-\u202eo4",
    "zero-width": "gpt\u200b-4o",
    "line-separator": "gpt-4o\u2028x",
}


@pytest.mark.parametrize("name", list(HOSTILE.values()), ids=list(HOSTILE))
def test_the_rule_refuses_display_changing_characters(name: str):
    assert model_names.problem(name) == model_names.MESSAGE


@pytest.mark.parametrize("name", ["gpt-4o", "claude-3-5-sonnet@20240620", "models/gemini-1.5 pro", "gpt-*",
                                  "mistral/Mixtral-8x7B", "模型-1"])
def test_ordinary_names_and_patterns_pass(name: str):
    assert model_names.problem(name) is None


def _user_key(client: Any, admin_headers: dict[str, str]) -> str:
    created = client.post("/api/admin/keys", json={"name": "Model Tester", "tier": "pro"}, headers=admin_headers)
    assert created.status_code == 201
    return created.get_json()["key"]


@pytest.mark.parametrize("oddity", ["nul", "c1-csi", "rtl-override", "line-separator"])
def test_a_proxied_request_naming_such_a_model_is_400_in_its_family_shape(client, admin_headers, oddity):
    key = _user_key(client, admin_headers)
    model = HOSTILE[oddity]
    openai = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                         json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert openai.status_code == 400
    error = openai.get_json()["error"]
    assert error["code"] == "invalid_model" and error["param"] == "model" and model not in error["message"]
    anthropic = client.post("/v1/messages", headers={"x-api-key": key},
                            json={"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert anthropic.status_code == 400
    assert anthropic.get_json()["type"] == "error"
    assert anthropic.get_json()["error"]["type"] == "invalid_request_error"


BACKEND = {"name": "modelcheck", "kind": "openai", "base_url": "https://api.example.com/v1"}


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/backends", {**BACKEND, "models": ["gpt-4o", HOSTILE["c1-csi"]]}, "models"),
    ("/backends", {**BACKEND, "model_aliases": {"fast": HOSTILE["rtl-override"]}}, "model_aliases"),
    ("/backends", {**BACKEND, "model_aliases": {HOSTILE["zero-width"]: "gpt-4o"}}, "model_aliases"),
    ("/backends", {**BACKEND, "prices": {HOSTILE["next-line"]: {"input": 1, "output": 2}}}, "prices"),
    ("/users", {"name": "Odd", "allowed_models": ["gpt-*", HOSTILE["line-separator"]]}, "allowed_models"),
])
def test_admin_fields_holding_model_names_refuse_them(client, admin_headers, path, body, field):
    response = client.post("/api/admin" + path, json=body, headers=admin_headers)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]


def test_a_key_allowed_models_refuse_them(client, admin_headers):
    user = client.post("/api/admin/users", json={"name": "Kay"}, headers=admin_headers).get_json()
    response = client.post(f"/api/admin/users/{user['id']}/keys", json={"allowed_models": [HOSTILE["rtl-override"]]},
                           headers=admin_headers)
    assert response.status_code == 422 and "allowed_models" in response.get_json()["error"]["fields"]
    fine = client.post(f"/api/admin/users/{user['id']}/keys", json={"allowed_models": ["gpt-4o", "claude-*"]},
                       headers=admin_headers)
    assert fine.status_code == 201 and fine.get_json()["allowed_models"] == ["gpt-4o", "claude-*"]
