"""The official OpenAI SDK, pointed at the gateway, gets what the provider sends, and
every token the fake upstream reports is recorded exactly once."""
from __future__ import annotations

import openai
import pytest

from gateway.fake_upstream import count_prompt_tokens
from tests.fixtures.deployment import UPSTREAM_SECRET

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the gateway please"}]


def client_for(deployment, key=None) -> openai.OpenAI:
    return openai.OpenAI(base_url=deployment.url + "/v1", api_key=key or deployment.key, max_retries=0, timeout=20)


def test_chat_completion_non_stream_records_exact_usage(deployment):
    client = client_for(deployment)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=7)
    expected_in = count_prompt_tokens({"messages": MESSAGES})
    assert completion.usage.prompt_tokens == expected_in
    assert completion.usage.completion_tokens == 7
    assert completion.choices[0].message.content.split() == [f"tok{i}" for i in range(7)]
    [row] = deployment.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"], row["status"], row["outcome"]) == (expected_in, 7, 200, "ok")
    assert row["estimated"] is False and row["streamed"] is False
    assert row["model"] == "gpt-4o-mini" and row["route"] == "/v1/chat/completions"


def test_chat_completion_stream_relays_every_chunk_and_hides_injected_usage_chunk(deployment):
    client = client_for(deployment)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == [f"tok{i}" for i in range(5)]
    # the client did not ask for usage, so the usage-only chunk the gateway requested is not passed on
    assert all(c.choices for c in chunks)
    [row] = deployment.wait_for_logs(1)
    expected = (count_prompt_tokens({"messages": MESSAGES}), 5, True)
    assert (row["tokens_in"], row["tokens_out"], row["streamed"]) == expected
    assert row["ttfb_ms"] is not None and row["ttfb_ms"] <= row["latency_ms"]


def test_stream_with_client_requested_usage_passes_usage_chunk_through(deployment):
    client = client_for(deployment)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=3, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].choices == []
    [row] = deployment.wait_for_logs(1)
    assert row["tokens_out"] == 3


def test_completions_embeddings_and_alias_route_to_the_provider_model(deployment):
    client = client_for(deployment)
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="one two three", max_tokens=4)
    assert completion.usage.prompt_tokens == 3 and completion.usage.completion_tokens == 4
    embedding = client.embeddings.create(model="text-embedding-3-small", input=["alpha beta", "gamma"])
    assert len(embedding.data) == 2 and embedding.usage.prompt_tokens == 3
    aliased = client.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=2)
    assert aliased.usage.completion_tokens == 2
    sent = deployment.upstream.requests()
    assert [r["body"]["model"] for r in sent] == ["gpt-3.5-turbo-instruct", "text-embedding-3-small", "gpt-4o-mini"]
    rows = deployment.wait_for_logs(3)
    assert sorted((r["route"], r["tokens_in"], r["tokens_out"]) for r in rows) == sorted([
        ("/v1/completions", 3, 4), ("/v1/embeddings", 3, 0),
        ("/v1/chat/completions", count_prompt_tokens({"messages": MESSAGES}), 2)])


def test_models_lists_what_the_key_may_use(deployment):
    models = sorted(m.id for m in client_for(deployment).models.list())
    assert models == ["fast", "text-embedding-3-small"]  # patterns cannot be listed, aliases and names can
    deployment.admin.patch(f"/users/{deployment.user_id}", {"allowed_models": ["fast"]})
    assert [m.id for m in client_for(deployment).models.list()] == ["fast"]


def test_upstream_never_sees_the_client_key_and_gets_its_own_secret(deployment):
    client_for(deployment).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)
    [sent] = deployment.upstream.requests()
    flat = repr(sent)
    assert deployment.key not in flat
    assert sent["headers"].get("Authorization", sent["headers"].get("authorization")) == f"Bearer {UPSTREAM_SECRET}"


def test_redirecting_body_fields_are_dropped_before_forwarding(deployment):
    client = client_for(deployment)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1,
                                   extra_body={"api_base": "http://127.0.0.9:1", "api_key": "sk-evil",
                                               "base_url": "http://127.0.0.9:1"})
    [sent] = deployment.upstream.requests()
    assert not {"api_base", "api_key", "base_url"} & set(sent["body"])


@pytest.mark.parametrize("key", ["", "sk-dev-unknownkeyunknownkeyunknownkey00", "not a key", "' OR 1=1 --"])
def test_unknown_or_malformed_keys_get_one_identical_401(deployment, key):
    import requests

    response = requests.post(deployment.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": "gpt-4o-mini", "messages": MESSAGES}, timeout=10)
    assert response.status_code == 401
    assert response.json() == {"error": {
        "message": "Invalid API key. Check the key you were given (it starts with sk-).",
        "type": "authentication_error", "code": "invalid_api_key", "param": None}}
    assert deployment.upstream.requests() == []


def test_unknown_model_is_404_in_openai_format(deployment):
    with pytest.raises(openai.NotFoundError) as info:
        client_for(deployment).chat.completions.create(model="llama-3", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"


def test_oversized_body_is_413_and_never_forwarded(deployment):
    import requests

    response = requests.post(deployment.url + "/v1/chat/completions",
                             headers={"Authorization": f"Bearer {deployment.key}"},
                             data=b'{"model": "gpt-4o-mini", "messages": [], "pad": "' + b"x" * (11 * 1024 * 1024)
                             + b'"}',
                             timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert deployment.upstream.requests() == []


def test_every_response_carries_a_request_id(deployment):
    import requests

    response = requests.get(deployment.url + "/v1/models", headers={"Authorization": f"Bearer {deployment.key}"})
    assert len(response.headers["X-Request-ID"]) >= 16
    response = requests.get(deployment.url + "/v1/models", headers={"X-Request-ID": "client-req-1"})
    assert response.status_code == 401 and response.headers["X-Request-ID"] == "client-req-1"
