"""The official ``google-genai`` SDK through the gateway on a ``kind=gemini`` backend (the
fake upstream's Gemini API): generate, stream, count, list, function-call turns and
thoughts, with exact usage rows; the client key's two Gemini places (``x-goog-api-key``,
``?key=``), neither ever reaching the upstream; Google's error shape everywhere on
``/v1beta``, mid-stream included."""
from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from google import genai
from google.genai import errors, types

from gateway import create_app
from gateway.fake_upstream.gemini import FUNCTION_CALL_TOKENS, THOUGHT_TOKENS, count_gemini_prompt_tokens
from tests.conftest import make_env
from tests.fixtures.deployment import Deployment, deploy

GEMINI_SECRET = "gemini-upstream-CANARY-5e6f7a8b9c0d1e2f"
PROMPT = "Count these five words"
MODEL = "gemini-2.5-flash"
BASE = "/v1beta/models/"


@pytest.fixture
def deployment(gateway, fake_upstream, migrated) -> Deployment:
    """The standard deployment plus a Gemini backend with one upstream key."""
    deployed = deploy(gateway, fake_upstream, migrated)
    add_gemini_backend(deployed)
    return deployed


def add_gemini_backend(deployed: Deployment) -> int:
    backend = deployed.admin.post("/backends", {
        "name": "fake-gemini", "kind": "gemini", "base_url": deployed.upstream.url,
        "models": ["gemini-2.5-flash", "gemini-2.5-pro", "gemma-*"],
        "model_aliases": {"fast-gemini": "gemini-2.0-flash"},
    })
    deployed.admin.post(f"/backends/{backend['id']}/keys", {"secret": GEMINI_SECRET, "label": "primary"})
    return int(backend["id"])


# genai.Client closes its HTTP client when it is garbage collected, which a chained
# ``client_for(...).models.generate_content(...)`` would do mid-call: keep them alive.
_clients: list[genai.Client] = []


def client_for(deployment: Deployment, key: str | None = None, api_version: str | None = "v1beta") -> genai.Client:
    """``api_version=None``: the SDK's own default (``v1`` in google-genai 3.x)."""
    client = genai.Client(api_key=key or deployment.key, http_options=types.HttpOptions(
        base_url=deployment.url, api_version=api_version, timeout=20_000,
        retry_options=types.HttpRetryOptions(attempts=1)))
    del _clients[:-8]
    _clients.append(client)
    return client


def upstream_generations(deployment: Deployment) -> list[dict[str, Any]]:
    return [r for r in deployment.upstream.requests() if r["path"].startswith((BASE, "/v1/models/"))]


def test_generate_content_records_exact_usage(deployment):
    response = client_for(deployment).models.generate_content(
        model=MODEL, contents=PROMPT, config=types.GenerateContentConfig(max_output_tokens=6))
    assert response.text.split() == [f"tok{i}" for i in range(6)]
    assert response.usage_metadata.prompt_token_count == 4
    assert response.usage_metadata.candidates_token_count == 6
    [row] = deployment.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"], row["route"], row["streamed"], row["estimated"], row["status"]) == \
        (4, 6, f"{BASE}{MODEL}:generateContent", False, False, 200)
    assert row["model"] == MODEL and row["outcome"] == "ok"


def test_stream_with_thoughts_records_the_last_cumulative_usage(deployment):
    config = types.GenerateContentConfig(max_output_tokens=5, system_instruction="be brief now",
                                         thinking_config=types.ThinkingConfig(include_thoughts=True))
    chunks = list(client_for(deployment).models.generate_content_stream(model=MODEL, contents=PROMPT, config=config))
    parts = [part for chunk in chunks for part in chunk.candidates[0].content.parts]
    thoughts = "".join(part.text for part in parts if part.thought)
    text = "".join(part.text or "" for part in parts if not part.thought)
    assert thoughts.split() == [f"thinking{i}" for i in range(THOUGHT_TOKENS)]
    assert text.split() == [f"tok{i}" for i in range(5)]
    final = chunks[-1].usage_metadata
    assert (final.prompt_token_count, final.candidates_token_count, final.thoughts_token_count) == \
        (7, 5, THOUGHT_TOKENS)
    [row] = deployment.wait_for_logs(1)
    # Output billed = candidates + thoughts (there is no reasoning column).
    assert (row["tokens_in"], row["tokens_out"], row["streamed"], row["estimated"]) == \
        (7, 5 + THOUGHT_TOKENS, True, False)
    assert row["route"] == f"{BASE}{MODEL}:streamGenerateContent"
    [sent] = upstream_generations(deployment)
    assert sent["query"] == "alt=sse"


def test_the_sdks_default_v1_api_is_served_and_forwarded_as_v1(deployment):
    client = client_for(deployment, api_version=None)
    response = client.models.generate_content(model=MODEL, contents=PROMPT, config={"max_output_tokens": 2})
    assert response.text.split() == ["tok0", "tok1"]
    streamed = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(
        model=MODEL, contents=PROMPT, config={"max_output_tokens": 3}))
    assert streamed.split() == ["tok0", "tok1", "tok2"]
    assert client.models.count_tokens(model=MODEL, contents=PROMPT).total_tokens == 4
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model="gpt-4o", contents=PROMPT)
    assert (info.value.code, info.value.status) == (404, "NOT_FOUND")
    assert [r["path"] for r in upstream_generations(deployment)] == [
        f"/v1/models/{MODEL}:generateContent", f"/v1/models/{MODEL}:streamGenerateContent",
        f"/v1/models/{MODEL}:countTokens"]
    rows = sorted(deployment.wait_for_logs(3), key=lambda row: row["id"])  # the 404 is refused before a row
    assert [(row["route"].rpartition(":")[2], row["tokens_in"], row["tokens_out"]) for row in rows] == [
        ("generateContent", 4, 2), ("streamGenerateContent", 4, 3), ("countTokens", 0, 0)]


def test_cached_content_tokens_are_recorded_as_cache_reads(deployment):
    client_for(deployment).models.generate_content(
        model=MODEL, contents="cached words here [[cache_read:2]]", config={"max_output_tokens": 3})
    [row] = deployment.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"], row["cache_read_tokens"]) == (4, 3, 2)


def test_count_tokens_answers_and_is_charged_nothing(deployment):
    result = client_for(deployment).models.count_tokens(model=MODEL, contents=PROMPT)
    assert result.total_tokens == 4
    [row] = deployment.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"], row["estimated"], row["route"]) == \
        (0, 0, False, f"{BASE}{MODEL}:countTokens")
    usage = deployment.admin.get(f"/users/{deployment.user_id}")["usage"]
    assert (usage["tokens"], usage["reserved_tokens"], usage["requests"]) == (0, 0, 1)


def test_count_tokens_still_answers_when_the_token_quota_is_spent(gateway, fake_upstream, migrated):
    deployed = deploy(gateway, fake_upstream, migrated, token_quota=12)  # estimate 6 + 6 output
    add_gemini_backend(deployed)
    client = client_for(deployed)
    client.models.generate_content(model=MODEL, contents=PROMPT, config={"max_output_tokens": 6})
    deployed.wait_for_logs(1)
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model=MODEL, contents=PROMPT, config={"max_output_tokens": 1})
    assert (info.value.code, info.value.status) == (402, "RESOURCE_EXHAUSTED")
    assert info.value.details["error"]["details"][0]["reason"] == "quota_exceeded"
    assert client.models.count_tokens(model=MODEL, contents=PROMPT).total_tokens == 4


def test_models_list_and_get_answer_in_the_gemini_shape(deployment):
    client = client_for(deployment)
    names = sorted(model.name for model in client.models.list())
    assert names == ["models/fast-gemini", "models/gemini-2.5-flash", "models/gemini-2.5-pro"]
    model = client.models.get(model="gemini-2.5-pro")
    assert model.name == "models/gemini-2.5-pro"
    assert "generateContent" in model.supported_actions
    assert client.models.get(model="models/gemma-3-27b-it").display_name == "gemma-3-27b-it"  # by its pattern
    with pytest.raises(errors.ClientError) as info:
        client.models.get(model="gpt-4o")
    assert (info.value.code, info.value.status) == (404, "NOT_FOUND")


def test_an_alias_is_rewritten_in_the_upstream_path(deployment):
    client_for(deployment).models.generate_content(model="fast-gemini", contents=PROMPT,
                                                   config={"max_output_tokens": 2})
    [sent] = upstream_generations(deployment)
    assert sent["path"] == f"{BASE}gemini-2.0-flash:generateContent"
    [row] = deployment.wait_for_logs(1)
    assert row["model"] == "fast-gemini" and (row["tokens_in"], row["tokens_out"]) == (4, 2)


def test_the_client_key_never_reaches_the_upstream_and_the_pooled_secret_does(deployment):
    client_for(deployment).models.generate_content(model=MODEL, contents=PROMPT, config={"max_output_tokens": 1})
    [sent] = upstream_generations(deployment)
    assert sent["headers"]["x-goog-api-key"] == GEMINI_SECRET
    assert "authorization" not in sent["headers"] and "x-api-key" not in sent["headers"]
    assert deployment.key not in json.dumps(sent)


def test_the_key_query_parameter_is_accepted_stripped_and_never_logged(deployment):
    url = f"{deployment.url}{BASE}{MODEL}:streamGenerateContent?alt=sse&key={deployment.key}"
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}], "generationConfig": {"maxOutputTokens": 3}}
    response = requests.post(url, json=body, timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 3
    [sent] = upstream_generations(deployment)
    assert sent["query"] == "alt=sse"
    assert sent["headers"]["x-goog-api-key"] == GEMINI_SECRET
    assert deployment.key not in json.dumps(sent)
    [row] = deployment.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"]) == (4, 3)
    assert deployment.key not in deployment.gateway.output()


def test_without_alt_sse_the_stream_is_googles_json_array(deployment):
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}], "generationConfig": {"maxOutputTokens": 4}}
    response = requests.post(f"{deployment.url}{BASE}{MODEL}:streamGenerateContent", json=body,
                             headers={"x-goog-api-key": deployment.key}, timeout=20)
    assert response.status_code == 200, response.text
    chunks = response.json()
    assert isinstance(chunks, list) and chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 4
    [row] = deployment.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"], row["streamed"], row["estimated"]) == (4, 4, True, False)


def test_the_reserved_budget_goes_upstream_as_max_output_tokens_when_the_client_gave_none(
        gateway, fake_upstream, migrated):
    deployed = deploy(gateway, fake_upstream, migrated, token_quota=100)
    add_gemini_backend(deployed)
    client_for(deployed).models.generate_content(model=MODEL, contents=PROMPT)
    [sent] = upstream_generations(deployed)
    # What is left of the quota after the prompt estimate (6 tokens for 22 characters).
    assert sent["body"]["generationConfig"]["maxOutputTokens"] == 100 - 6
    [row] = deployed.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"]) == (4, 16)


def test_a_snake_case_cap_is_read_like_the_camel_case_one(deployment):
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
            "generation_config": {"max_output_tokens": 2, "candidate_count": 2}}
    response = requests.post(f"{deployment.url}{BASE}{MODEL}:generateContent", json=body,
                             headers={"x-goog-api-key": deployment.key}, timeout=20)
    assert response.status_code == 200, response.text
    [sent] = upstream_generations(deployment)
    assert sent["body"]["generation_config"] == {"max_output_tokens": 2, "candidate_count": 2}
    assert "generationConfig" not in sent["body"]
    [row] = deployment.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"]) == (4, 4)  # 2 tokens x 2 candidates
    both = {**body, "generationConfig": {"maxOutputTokens": 9}}
    refused = requests.post(f"{deployment.url}{BASE}{MODEL}:generateContent", json=both,
                            headers={"x-goog-api-key": deployment.key}, timeout=20)
    assert refused.status_code == 400 and refused.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_a_function_call_turn_and_its_answer_record_exact_usage(deployment):
    weather = types.FunctionDeclaration(name="get_weather", description="Weather in a city", parameters={
        "type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]})
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[weather])], max_output_tokens=8,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    asking = 'Weather? [[function:get_weather]] [[args:{"city": "Paris"}]]'
    ask = types.Content(role="user", parts=[types.Part(text=asking)])
    client = client_for(deployment)
    first = client.models.generate_content(model=MODEL, contents=[ask], config=config)
    [call] = first.function_calls
    assert (call.name, call.args) == ("get_weather", {"city": "Paris"})
    answer = types.Content(role="user", parts=[types.Part.from_function_response(
        name="get_weather", response={"temperature": 21})])
    second = client.models.generate_content(model=MODEL, contents=[ask, first.candidates[0].content, answer],
                                            config=config)
    assert second.text.split() == [f"tok{i}" for i in range(8)]
    sent = upstream_generations(deployment)
    rows = sorted(deployment.wait_for_logs(2), key=lambda row: row["id"])
    assert [(row["tokens_in"], row["tokens_out"]) for row in rows] == [
        (count_gemini_prompt_tokens(sent[0]["body"]), FUNCTION_CALL_TOKENS),
        (count_gemini_prompt_tokens(sent[1]["body"]), 8)]
    assert rows[1]["tokens_in"] > rows[0]["tokens_in"]


def test_errors_on_v1beta_use_the_gemini_shape(deployment):
    with pytest.raises(errors.ClientError) as info:
        client_for(deployment, key="sk-pro-wrongwrongwrongwrongwrongwrongwrong").models.generate_content(
            model=MODEL, contents=PROMPT)
    assert (info.value.code, info.value.status) == (401, "UNAUTHENTICATED")
    assert info.value.details["error"]["message"].startswith("Invalid API key")
    with pytest.raises(errors.ClientError) as info:
        client_for(deployment).models.generate_content(model="claude-haiku-4-5", contents=PROMPT)
    assert (info.value.code, info.value.status) == (404, "NOT_FOUND")  # not on a Gemini backend
    headers = {"x-goog-api-key": deployment.key}
    cases = [
        ("POST", f"{BASE}{MODEL}:embedContent", b"{}", 404, "NOT_FOUND"),
        ("POST", f"{BASE}{MODEL}:generateContent", b"{not json", 400, "INVALID_ARGUMENT"),
        ("POST", f"{BASE}bad%20name:generateContent", b"{}", 400, "INVALID_ARGUMENT"),
        ("POST", f"{BASE}{MODEL}:generateContent", b'{"generationConfig": {"maxOutputTokens": 0}}', 400,
         "INVALID_ARGUMENT"),
        ("POST", f"{BASE}{MODEL}:generateContent", b'{"generationConfig": {"candidateCount": 9}}', 400,
         "INVALID_ARGUMENT"),
        ("GET", "/v1beta/tunedModels", None, 404, "NOT_FOUND"),
    ]
    for method, path, data, status, name in cases:
        response = requests.request(method, deployment.url + path, data=data, headers=headers, timeout=10)
        error = response.json()["error"]
        assert (response.status_code, error["code"], error["status"]) == (status, status, name), (path, error)
        assert set(error) <= {"code", "message", "status", "details"}
    assert requests.get(deployment.url + "/v1beta/models", timeout=10).json()["error"]["status"] == "UNAUTHENTICATED"


def test_an_upstream_caller_error_is_passed_through_in_the_gemini_shape(deployment):
    with pytest.raises(errors.ClientError) as info:
        client_for(deployment).models.generate_content(model=MODEL, contents="[[status:400]]")
    assert (info.value.code, info.value.status, info.value.message) == (400, "INVALID_ARGUMENT", "Fake failure 400")
    [row] = deployment.wait_for_logs(1)
    assert (row["status"], row["outcome"], row["tokens_in"], row["tokens_out"]) == (400, "upstream_error", 0, 0)


def test_a_stream_cut_by_the_upstream_ends_with_a_gemini_error_chunk(deployment):
    stream = client_for(deployment).models.generate_content_stream(
        model=MODEL, contents="Cut this [[reset_after:3]]", config={"max_output_tokens": 10})
    texts = []
    with pytest.raises(errors.ServerError) as info:
        for chunk in stream:
            texts.append(chunk.text)
    assert "".join(texts).split() == ["tok0", "tok1", "tok2"]
    assert (info.value.code, info.value.status) == (502, "UNAVAILABLE")
    [row] = deployment.wait_for_logs(1)
    # The last cumulative usage that arrived, not an estimate.
    assert (row["outcome"], row["tokens_in"], row["tokens_out"], row["estimated"]) == \
        ("upstream_error", 3, 3, False)


def test_a_dead_gemini_key_fails_over_and_the_prober_checks_it_on_v1beta_models(deployment, migrated, tmp_path):
    [backend] = [b for b in deployment.admin.get("/backends")["items"] if b["kind"] == "gemini"]
    dead_secret = "gemini-dead-fail401-0123456789abcdef"
    dead = deployment.admin.post(f"/backends/{backend['id']}/keys", {"secret": dead_secret, "label": "dead"})
    client = client_for(deployment)
    for _ in range(3):  # round-robin meets the dead key at least once
        assert client.models.generate_content(model=MODEL, contents=PROMPT, config={"max_output_tokens": 1}).text
    assert deployment.admin.get(f"/upstream-keys/{dead['id']}")["state"] == "unhealthy"
    deployment.upstream.reset()
    app = create_app(env=make_env(migrated, tmp_path / "instance"))
    assert app.test_cli_runner().invoke(args=["probe-upstreams"]).exit_code == 0
    [probe] = deployment.upstream.requests()
    assert (probe["method"], probe["path"], probe["headers"]["x-goog-api-key"]) == \
        ("GET", "/v1beta/models", dead_secret)
    assert deployment.admin.get(f"/upstream-keys/{dead['id']}")["state"] == "disabled"


def test_the_pass_through_never_forwards_a_key_sent_as_x_goog_api_key(deployment):
    deployment.admin.post("/backends", {"name": "echoes", "kind": "http",
                                        "base_url": deployment.upstream.url + "/echo"})
    response = requests.get(f"{deployment.url}/proxy/echoes/where", headers={"x-goog-api-key": deployment.key},
                            timeout=10)
    assert response.status_code == 200, response.text
    assert "x-goog-api-key" not in response.json()["headers"]
    assert deployment.key not in response.text


def test_the_usage_api_reads_a_key_sent_as_x_goog_api_key(deployment):
    response = requests.get(f"{deployment.url}/api/usage", headers={"x-goog-api-key": deployment.key}, timeout=10)
    assert response.status_code == 200 and response.json()["owner"] == "client-one"
