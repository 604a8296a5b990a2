"""The official Anthropic SDK through the gateway: messages (stream and not) and
count_tokens, with usage (including cache tokens) recorded exactly."""
from __future__ import annotations

import anthropic
import pytest

from gateway.fake_upstream import count_prompt_tokens
from tests.fixtures.deployment import ANTHROPIC_SECRET

MESSAGES = [{"role": "user", "content": "Count these five words"}]


def client_for(deployment, key=None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=deployment.url, api_key=key or deployment.key, max_retries=0, timeout=20)


def test_messages_non_stream_records_exact_usage(deployment):
    message = client_for(deployment).messages.create(model="claude-3-5-haiku", max_tokens=6, messages=MESSAGES,
                                                     system="be brief")
    expected_in = count_prompt_tokens({"messages": MESSAGES, "system": "be brief"})
    assert message.usage.input_tokens == expected_in and message.usage.output_tokens == 6
    [row] = deployment.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"], row["route"], row["estimated"]) == \
        (expected_in, 6, "/v1/messages", False)


def test_messages_stream_relays_text_and_records_usage(deployment):
    with client_for(deployment).messages.stream(model="claude-3-5-haiku", max_tokens=4, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.split() == ["tok0", "tok1", "tok2", "tok3"]
    assert final.usage.output_tokens == 4
    [row] = deployment.wait_for_logs(1)
    expected = (count_prompt_tokens({"messages": MESSAGES}), 4, True)
    assert (row["tokens_in"], row["tokens_out"], row["streamed"]) == expected


def test_count_tokens_is_forwarded(deployment):
    result = client_for(deployment).messages.count_tokens(model="claude-3-5-haiku", messages=MESSAGES)
    assert result.input_tokens == count_prompt_tokens({"messages": MESSAGES})


def test_anthropic_credentials_are_set_for_the_upstream_and_client_key_is_not(deployment):
    client_for(deployment).messages.create(model="claude-3-5-haiku", max_tokens=1, messages=MESSAGES)
    [sent] = deployment.upstream.requests()
    assert sent["headers"]["x-api-key"] == ANTHROPIC_SECRET
    assert sent["headers"]["anthropic-version"]
    assert deployment.key not in repr(sent)


def test_errors_on_messages_route_use_anthropic_shape(deployment):
    with pytest.raises(anthropic.AuthenticationError) as info:
        client_for(deployment, key="sk-pro-wrongwrongwrongwrongwrongwrongwrong").messages.create(
            model="claude-3-5-haiku", max_tokens=1, messages=MESSAGES)
    assert info.value.body == {"type": "error", "error": {
        "type": "authentication_error",
        "message": "Invalid API key. Check the key you were given (it starts with sk-)."}}
    with pytest.raises(anthropic.NotFoundError) as info:
        client_for(deployment).messages.create(model="gpt-4o", max_tokens=1, messages=MESSAGES)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
