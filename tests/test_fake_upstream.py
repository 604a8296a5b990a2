"""The fake upstream, driven by the official SDKs (so the gateway's tests rest on answers
real clients accept) and by raw HTTP for the failure modes SDKs would hide."""
from __future__ import annotations

import hashlib
import http.client
import json
import time
from urllib.parse import urlsplit

import anthropic
import openai
import pytest
import requests

from gateway.fake_upstream import count_prompt_tokens
from gateway.proxy.usage_parser import UsageParser
from tests.fixtures.fake_upstream import FakeUpstreamProcess

KEY = "sk-upstream-test-0001"
AKEY = "sk-ant-upstream-test-0002"


def oai(fake: FakeUpstreamProcess, key: str = KEY, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key=key, max_retries=0, **kwargs)  # type: ignore[arg-type]


def ant(fake: FakeUpstreamProcess, key: str = AKEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.url, api_key=key, max_retries=0)


def chat_body(text: str, **extra: object) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "be brief"},
                                                 {"role": "user", "content": text}], **extra}


def post(fake: FakeUpstreamProcess, path: str, body: object, key: str | None = KEY,
         anthropic_route: bool = False, **kwargs: object) -> requests.Response:
    headers = {}
    if key and anthropic_route:
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    elif key:
        headers = {"Authorization": f"Bearer {key}"}
    return requests.post(fake.url + path, json=body, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


# -- SDK compatibility -------------------------------------------------------------------

def test_count_prompt_tokens_counts_words_in_messages_parts_system_and_input() -> None:
    body = {"system": [{"type": "text", "text": "one two"}],
            "messages": [{"role": "user", "content": "three four five"},
                         {"role": "user", "content": [{"type": "text", "text": "six"}, {"type": "image"}]}]}
    assert count_prompt_tokens(body) == 6
    assert count_prompt_tokens({"input": ["a b", "c"]}) == 3
    assert count_prompt_tokens({"prompt": [1, 2, 3, 4]}) == 4


def test_openai_sdk_chat_reports_exact_usage_and_token_words(fake_upstream: FakeUpstreamProcess) -> None:
    body = chat_body("hello there friend [[tokens:5]]")
    result = oai(fake_upstream).chat.completions.create(**body)  # type: ignore[call-overload]
    assert result.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (count_prompt_tokens(body), 5)
    assert count_prompt_tokens(body) == 6


def test_openai_sdk_chat_stream_sends_usage_chunk_only_when_asked(fake_upstream: FakeUpstreamProcess) -> None:
    client = oai(fake_upstream)
    chunks = list(client.chat.completions.create(**chat_body("a b c"), stream=True,  # type: ignore[call-overload]
                                                 stream_options={"include_usage": True}))
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 16
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 16)
    plain = list(client.chat.completions.create(**chat_body("a b c"), stream=True))  # type: ignore[call-overload]
    assert all(c.choices and c.usage is None for c in plain)


def test_max_tokens_caps_the_completion_and_reports_length(fake_upstream: FakeUpstreamProcess) -> None:
    result = oai(fake_upstream).chat.completions.create(**chat_body("x [[tokens:40]]"), max_tokens=7)  # type: ignore
    assert result.usage.completion_tokens == 7 and result.choices[0].finish_reason == "length"


def test_openai_sdk_completions_stream_and_not(fake_upstream: FakeUpstreamProcess) -> None:
    client = oai(fake_upstream)
    result = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say it [[tokens:3]]")
    assert result.choices[0].text == "tok0 tok1 tok2 " and result.usage.prompt_tokens == 3
    chunks = list(client.completions.create(model="m", prompt="say it [[tokens:3]]", stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "tok0 tok1 tok2 "
    assert chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("encoding", ["float", None])
def test_openai_sdk_embeddings_give_eight_floats_per_input(fake_upstream: FakeUpstreamProcess,
                                                           encoding: str | None) -> None:
    """The SDK asks for base64 by default and decodes it; float is the explicit choice."""
    extra = {"encoding_format": encoding} if encoding else {}
    result = oai(fake_upstream).embeddings.create(model="text-embedding-3-small", input=["a b c", "d"], **extra)
    assert [len(item.embedding) for item in result.data] == [8, 8]
    assert all(isinstance(x, float) for x in result.data[0].embedding)
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (4, 4)


def test_openai_sdk_lists_and_retrieves_models(fake_upstream: FakeUpstreamProcess) -> None:
    client = oai(fake_upstream)
    assert "gpt-4o-mini" in [m.id for m in client.models.list()]
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"


def test_anthropic_sdk_message_reports_usage_with_cache_directive(fake_upstream: FakeUpstreamProcess) -> None:
    message = ant(fake_upstream).messages.create(model="claude-opus-4-6", max_tokens=100, system="be kind",
                                                 messages=[{"role": "user", "content": "hi you [[cache_read:9]]"}])
    assert message.content[0].text == "".join(f"tok{i} " for i in range(16))  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 16)
    assert message.usage.cache_read_input_tokens == 9 and message.stop_reason == "end_turn"


def test_anthropic_sdk_stream_follows_the_real_event_sequence(fake_upstream: FakeUpstreamProcess) -> None:
    client = ant(fake_upstream)
    with client.messages.stream(model="claude-opus-4-6", max_tokens=4,
                                messages=[{"role": "user", "content": "one two three"}]) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_message()
    assert types[0] == "message_start" and types.count("content_block_delta") == 4
    assert final.usage.output_tokens == 4 and final.usage.input_tokens == 3
    assert final.stop_reason == "max_tokens"
    raw = post(fake_upstream, "/v1/messages", {"model": "c", "max_tokens": 2, "stream": True,
                                               "messages": [{"role": "user", "content": "x"}]},
               key=AKEY, anthropic_route=True)
    events = [line[7:] for line in raw.text.splitlines() if line.startswith("event: ")]
    assert events == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
                      "content_block_stop", "message_delta", "message_stop"]


def test_anthropic_sdk_counts_tokens(fake_upstream: FakeUpstreamProcess) -> None:
    result = ant(fake_upstream).messages.count_tokens(model="claude-opus-4-6",
                                                      messages=[{"role": "user", "content": "a b c d"}])
    assert result.input_tokens == 4


def test_streams_parse_to_exact_usage_with_the_gateway_parser(fake_upstream: FakeUpstreamProcess) -> None:
    body = chat_body("w1 w2 [[tokens:9]]", stream=True, stream_options={"include_usage": True})
    parser = UsageParser("openai", True, strip_usage_chunk=True)
    client_bytes = parser.feed(post(fake_upstream, "/v1/chat/completions", body).content) + parser.finish()
    assert (parser.usage.input_tokens, parser.usage.output_tokens, parser.saw_done) == (count_prompt_tokens(body), 9,
                                                                                         True)
    assert b'"choices":[]' not in client_bytes and client_bytes.endswith(b"data: [DONE]\n\n")


# -- failure modes -----------------------------------------------------------------------

def test_anthropic_routes_accept_the_bearer_header_the_anthropic_sdk_sends(
        fake_upstream: FakeUpstreamProcess) -> None:
    ant(fake_upstream).messages.create(model="claude-opus-4-6", max_tokens=1,
                                       messages=[{"role": "user", "content": "x"}])
    headers = fake_upstream.requests()[0]["headers"]
    assert headers["authorization"] == f"Bearer {AKEY}" and "anthropic-version" in headers


def test_missing_credentials_answer_401_in_each_provider_shape(fake_upstream: FakeUpstreamProcess) -> None:
    openai_answer = post(fake_upstream, "/v1/chat/completions", chat_body("x"), key=None)
    anthropic_answer = post(fake_upstream, "/v1/messages", {}, key=None, anthropic_route=True)
    assert openai_answer.status_code == anthropic_answer.status_code == 401
    assert openai_answer.json()["error"]["code"] == "invalid_api_key"
    assert anthropic_answer.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("marker,status", [("fail401", 401), ("fail403", 403), ("fail500", 500), ("fail503", 503)])
def test_key_markers_answer_their_status(fake_upstream: FakeUpstreamProcess, marker: str, status: int) -> None:
    assert post(fake_upstream, "/v1/chat/completions", chat_body("x"), key=f"k-{marker}").status_code == status
    answer = post(fake_upstream, "/v1/messages", {}, key=f"k-{marker}", anthropic_route=True)
    assert answer.status_code == status and answer.json()["type"] == "error"


def test_fail429_key_answers_rate_limit_with_retry_after(fake_upstream: FakeUpstreamProcess) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        oai(fake_upstream, key="k-fail429").chat.completions.create(**chat_body("x"))  # type: ignore[call-overload]
    assert caught.value.response.headers["Retry-After"] == "2"


def test_directives_choose_status_and_retry_after(fake_upstream: FakeUpstreamProcess) -> None:
    assert post(fake_upstream, "/v1/chat/completions", chat_body("x [[status:503]]")).status_code == 503
    answer = post(fake_upstream, "/v1/messages", {"messages": [{"role": "user", "content": "[[retry_after:7]]"}]},
                  key=AKEY, anthropic_route=True)
    assert (answer.status_code, answer.headers["Retry-After"]) == (429, "7")


def test_slow_key_and_delay_directive_hold_the_headers_back(fake_upstream: FakeUpstreamProcess) -> None:
    started = time.monotonic()
    assert post(fake_upstream, "/v1/chat/completions", chat_body("x"), key="k-slow").status_code == 200
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    post(fake_upstream, "/v1/chat/completions", chat_body("x [[delay:0.3]]"))
    assert time.monotonic() - started >= 0.3


def test_reset_key_breaks_the_connection_before_any_header(fake_upstream: FakeUpstreamProcess) -> None:
    with pytest.raises(requests.ConnectionError):
        post(fake_upstream, "/v1/chat/completions", chat_body("x"), key="k-reset")


def test_hang_key_never_answers(fake_upstream: FakeUpstreamProcess) -> None:
    with pytest.raises(requests.ReadTimeout):
        requests.post(fake_upstream.url + "/v1/chat/completions", json=chat_body("x"),
                      headers={"Authorization": "Bearer k-hang"}, timeout=0.5)


def _content_events(raw: bytes) -> int:
    return raw.count(b'"content":"tok')


def test_reset_after_sends_n_content_events_then_resets(fake_upstream: FakeUpstreamProcess) -> None:
    received = b""
    with (pytest.raises(requests.exceptions.ChunkedEncodingError),
          post(fake_upstream, "/v1/chat/completions", chat_body("x [[reset_after:3]]", stream=True),
               stream=True) as answer):
        for piece in answer.iter_content(None):
            received += piece
    assert _content_events(received) == 3 and b"[DONE]" not in received


def test_stall_after_sends_n_content_events_then_goes_quiet(fake_upstream: FakeUpstreamProcess) -> None:
    received = b""
    with pytest.raises(requests.exceptions.ConnectionError):
        answer = requests.post(fake_upstream.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                               json=chat_body("x [[stall_after:3]]", stream=True), stream=True, timeout=(5, 0.5))
        for piece in answer.iter_content(None):
            received += piece
    assert _content_events(received) == 3


def test_usage_none_and_bogus_directives(fake_upstream: FakeUpstreamProcess) -> None:
    assert "usage" not in post(fake_upstream, "/v1/chat/completions", chat_body("x [[usage:none]]")).json()
    bogus = post(fake_upstream, "/v1/messages", {"max_tokens": 5, "messages": [{"role": "user",
                                                                                  "content": "[[usage:bogus]]"}]},
                 key=AKEY, anthropic_route=True).json()["usage"]
    assert bogus["input_tokens"] < 0 and bogus["output_tokens"] > 10_000_000


def test_big_event_and_interval_directives(fake_upstream: FakeUpstreamProcess) -> None:
    started = time.monotonic()
    raw = post(fake_upstream, "/v1/chat/completions",
               chat_body("x [[big_event:3000000]] [[interval:0.02]] [[tokens:3]]", stream=True)).content
    assert time.monotonic() - started >= 0.02 * 6
    events = raw.split(b"\n\n")
    assert max(len(event) for event in events) > 3_000_000 and _content_events(raw) == 3


# -- control API and pass-through helpers ---------------------------------------------------

def test_requests_are_recorded_with_headers_and_body_and_reset_clears_them(fake_upstream: FakeUpstreamProcess) -> None:
    post(fake_upstream, "/v1/chat/completions", chat_body("x", temperature=0.5))
    post(fake_upstream, "/v1/messages", {"max_tokens": 1, "messages": []}, key=AKEY, anthropic_route=True)
    recorded = fake_upstream.requests()
    assert [r["path"] for r in recorded] == ["/v1/chat/completions", "/v1/messages"]
    assert recorded[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert recorded[0]["body"]["temperature"] == 0.5
    assert recorded[1]["headers"]["x-api-key"] == AKEY
    assert fake_upstream.stats() == {"total": 2, "by_key": {KEY: 1, AKEY: 1}}
    fake_upstream.reset()
    assert fake_upstream.requests() == [] and fake_upstream.stats()["total"] == 0


def test_echo_reports_what_arrived_including_a_chunked_body(fake_upstream: FakeUpstreamProcess) -> None:
    payload = [b"a" * 70_000, b"b" * 5]
    answer = requests.put(fake_upstream.url + "/echo/images/up?x=1", data=iter(payload), timeout=10,
                          headers={"X-Thing": "yes"})
    echo = answer.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("PUT", "/echo/images/up", "x=1")
    assert echo["headers"]["x-thing"] == "yes" and echo["headers"]["transfer-encoding"] == "chunked"
    assert (echo["body_len"], echo["body_sha256"]) == (70_005, hashlib.sha256(b"".join(payload)).hexdigest())


def test_bytes_streams_exactly_n_bytes(fake_upstream: FakeUpstreamProcess) -> None:
    answer = requests.get(fake_upstream.url + "/bytes/200000", timeout=10)
    assert len(answer.content) == 200_000 and answer.content[:3] == b"\x00\x01\x02"


def test_keep_alive_serves_several_requests_on_one_connection(fake_upstream: FakeUpstreamProcess) -> None:
    address = urlsplit(fake_upstream.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=5)
    statuses = []
    for path in ("/health", "/nope", "/v1/models"):
        connection.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})
        response = connection.getresponse()
        statuses.append((response.status, json.loads(response.read()) is not None))
    sock = connection.sock
    connection.request("POST", "/v1/embeddings", body=json.dumps({"input": "q"}),
                       headers={"Authorization": f"Bearer {KEY}"})
    assert connection.getresponse().status == 200 and connection.sock is sock
    connection.close()
    assert statuses == [(200, True), (404, True), (200, True)]
