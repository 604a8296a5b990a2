"""The Gemini API's pure rules: where its key is read, which paths are its family, its
error body, and what the gateway makes of the path, the query and the body before
forwarding (``gateway.proxy.gemini_api``)."""
from __future__ import annotations

import json

import pytest

from gateway.api_family import error_format, route_family
from gateway.errors import ApiError, gemini_body
from gateway.key_rules import key_from_headers, key_from_request
from gateway.proxy.gemini_api import parse_target, upstream_body, upstream_query


def test_the_key_is_read_from_x_goog_api_key_after_the_other_headers():
    headers = {"X-Goog-API-Key": "sk-goog"}
    assert key_from_headers(_Headers(headers)) == "sk-goog"
    assert key_from_headers(_Headers({**headers, "X-API-Key": "sk-x"})) == "sk-x"
    assert key_from_headers(_Headers({**headers, "Authorization": "Bearer sk-b"})) == "sk-b"


def test_the_key_query_parameter_counts_only_where_passed_and_last():
    query = _Headers({"key": " sk-query "})
    assert key_from_request(_Headers({}), None) is None
    assert key_from_request(_Headers({}), query) == "sk-query"
    assert key_from_request(_Headers({"X-Goog-API-Key": "sk-goog"}), query) == "sk-goog"


@pytest.mark.parametrize("path,family", [
    ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini"),
    ("/v1beta/models", "gemini"),
    ("/v1beta/anything", "gemini"),
    ("/v1/models/gemini-2.5-flash:streamGenerateContent", "gemini"),
    ("/v1/models/ft:gpt-4o-mini:org::abc123", "openai"),
    ("/v1/models", "openai"),
    ("/v1/messages", "anthropic"),
])
def test_gemini_paths_are_the_gemini_family_with_its_error_format(path, family):
    assert route_family(path, "/proxy") == family
    assert error_format(family) == family


def test_the_gemini_error_body_names_the_google_status_and_carries_our_code():
    assert gemini_body(401, "bad key") == {"error": {"code": 401, "message": "bad key", "status": "UNAUTHENTICATED"}}
    body = gemini_body(402, "spent", "quota_exceeded")["error"]
    assert (body["status"], body["details"][0]["reason"]) == ("RESOURCE_EXHAUSTED", "quota_exceeded")
    assert gemini_body(529, "busy")["error"]["status"] == "INTERNAL"


def test_the_path_gives_model_and_method():
    assert parse_target("gemini-2.5-flash:streamGenerateContent") == ("gemini-2.5-flash", "streamGenerateContent")
    assert parse_target("models/gemini-2.0-flash-001:countTokens") == ("gemini-2.0-flash-001", "countTokens")
    for bad, status in (("gemini:embedContent", 404), ("gemini", 404), ("../x:generateContent", 400),
                        ("a/b:generateContent", 400), (":generateContent", 400)):
        with pytest.raises(ApiError) as info:
            parse_target(bad)
        assert info.value.status == status, bad


def test_credential_query_parameters_never_go_upstream():
    assert upstream_query(b"alt=sse&key=sk-user&KEY=x&access_token=t") == "?alt=sse"
    assert upstream_query(b"key=sk-user") == ""


def test_the_reserved_cap_is_set_only_when_the_client_gave_none_in_either_spelling():
    def sent(body, method="generateContent", cap=100):
        return json.loads(upstream_body(body, method, cap))

    assert sent({"contents": []})["generationConfig"] == {"maxOutputTokens": 100}
    assert sent({"generationConfig": {"temperature": 0.5}})["generationConfig"] == {"temperature": 0.5,
                                                                                   "maxOutputTokens": 100}
    assert sent({"generationConfig": {"maxOutputTokens": 7}})["generationConfig"] == {"maxOutputTokens": 7}
    assert sent({"generation_config": {"top_k": 3}}) == {"generation_config": {"top_k": 3, "max_output_tokens": 100}}
    assert sent({"generation_config": {"maxOutputTokens": 7}}) == {"generation_config": {"maxOutputTokens": 7}}
    assert sent({"contents": []}, method="countTokens") == {"contents": []}
    assert sent({"contents": [], "api_key": "x"}) == {"contents": [], "generationConfig": {"maxOutputTokens": 100}}


class _Headers:
    def __init__(self, values: dict[str, str]):
        self.values = {name.lower(): value for name, value in values.items()}

    def get(self, key: str) -> str | None:
        return self.values.get(key.lower())
