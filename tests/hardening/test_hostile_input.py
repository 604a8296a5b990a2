"""Hostile input at the proxy: malformed bodies, hostile headers, hostile keys and body
fields that try to steer the upstream call. None of it may answer 500, show a
traceback, charge anyone's quota or reach the upstream."""
from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import text

from .conftest import CANARY_UPSTREAM_SECRET, World, bearer, chat

TRACEBACK_MARKERS = ("Traceback", 'File "', "sqlalchemy", "psycopg", "sqlite3", "werkzeug")


@pytest.fixture
def untouched(world: World) -> Iterator[None]:
    """The test must not call the upstream or charge the canary user."""
    calls = world.upstream.stats()["total"]
    counters = world.counters(world.user_id)
    yield
    assert world.upstream.stats()["total"] == calls
    assert world.counters(world.user_id) == counters


def _clean(response: requests.Response, status: int | tuple[int, ...]) -> None:
    allowed = (status,) if isinstance(status, int) else status
    assert response.status_code in allowed, (response.status_code, response.text[:300])
    assert not any(marker in response.text for marker in TRACEBACK_MARKERS), response.text[:300]
    assert isinstance(response.json()["error"], dict)


def _raw(world: World, request: bytes, timeout: float = 10) -> bytes:
    """Send bytes as they are (no client-side validation) and read the whole answer."""
    parts = urlsplit(world.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    world.saw(data)
    return data


BAD_BODIES = [
    pytest.param(b"{not json", "application/json", 400, id="malformed"),
    pytest.param(b"", "application/json", 400, id="empty"),
    pytest.param(b"[1, 2, 3]", "application/json", 400, id="array"),
    pytest.param(b'"just a string"', "application/json", 400, id="string"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "application/json", 400, id="nested-arrays-100k"),
    pytest.param(b'{"model": "gpt-4o-mini", "x": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
                 "application/json", 400, id="nested-objects-5k"),
    pytest.param(b'{"model": "gpt-4o-mini", "messages": "\xff\xfe\xfd"}', "application/json", 400, id="bad-utf8"),
    pytest.param(b"model=gpt-4o-mini&messages=hi", "application/x-www-form-urlencoded", 415, id="form"),
    pytest.param(b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nx\r\n--b--\r\n",
                 "multipart/form-data; boundary=b", 415, id="multipart"),
    pytest.param(b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}', "text/plain", 415,
                 id="valid-json-as-text-plain"),
    pytest.param(b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}',
                 "text/plain; charset=utf-8", 415, id="valid-json-as-text-plain-charset"),
    pytest.param(b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": -5}', "application/json", 400,
                 id="negative-max-tokens"),
    pytest.param(b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": 1e400}', "application/json", 400,
                 id="infinite-max-tokens"),
    pytest.param(b'{"model": "gpt-4o-mini", "messages": [], "stream": "yes"}', "application/json", 400,
                 id="stream-not-bool"),
    pytest.param(b'{"model": {"$ne": null}, "messages": []}', "application/json", 400, id="model-object"),
    pytest.param(b'{"model": "' + b"m" * 5000 + b'", "messages": []}', "application/json", 400, id="model-huge"),
]


@pytest.mark.parametrize("body,content_type,status", BAD_BODIES)
def test_malformed_bodies_are_refused_cleanly(world: World, untouched: None, body: bytes, content_type: str,
                                              status: int) -> None:
    response = world.http().post(world.url + "/v1/chat/completions", data=body,
                                 headers={**bearer(world.key), "Content-Type": content_type})
    _clean(response, status)


def test_nan_and_duplicate_keys_never_answer_500(world: World) -> None:
    body = b'{"model": "gpt-4o-mini", "model": "gpt-4o-mini", "messages": NaN, "max_tokens": 2}'
    response = world.http().post(world.url + "/v1/chat/completions", data=body,
                                 headers={**bearer(world.key), "Content-Type": "application/json"})
    assert response.status_code in (200, 400, 502), response.text[:300]
    assert not any(marker in response.text for marker in TRACEBACK_MARKERS)


def test_oversized_bodies_are_413_with_or_without_content_length(world: World, untouched: None) -> None:
    big = json.dumps(chat("gpt-4o-mini", "x " * 700_000)).encode()  # ~1.4 MB > the 1 MiB limit
    response = world.http().post(world.url + "/v1/chat/completions", data=big,
                                 headers={**bearer(world.key), "Content-Type": "application/json"})
    _clean(response, 413)
    chunked = world.http().post(world.url + "/v1/chat/completions", data=iter([big[:600_000], big[600_000:]]),
                                headers={**bearer(world.key), "Content-Type": "application/json"})
    _clean(chunked, 413)
    huge_array = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ""}] * 60_000})
    _clean(world.http().post(world.url + "/v1/chat/completions", data=huge_array,
                             headers={**bearer(world.key), "Content-Type": "application/json"}), 413)
    anthropic = world.http().post(world.url + "/v1/messages", data=big,
                                  headers={"x-api-key": world.key, "Content-Type": "application/json"})
    assert anthropic.status_code == 413
    assert anthropic.json()["error"]["type"] == "request_too_large"


def test_huge_messages_array_within_the_limit_is_served_and_charged_once(world: World) -> None:
    model = world.backend()
    key, user_id, _ = world.new_key()
    messages = [{"role": "user", "content": "w"}] * 20_000  # ~620 KB, under the limit
    response = world.http().post(world.url + "/v1/chat/completions", headers=bearer(key),
                                 json={"model": model, "messages": messages, "max_tokens": 5}, timeout=30)
    assert response.status_code == 200
    [row] = world.wait_rows(user_id, 1)
    assert row["tokens_in"] == 20_000  # the fake counts one word per message
    assert world.counters(user_id)["reserved_tokens"] == 0


@pytest.mark.parametrize("header", [
    b"Authorization: Bearer sk-pro-abc\x00def\r\n",
    b"X-Request-ID: a\x00b\r\n",
    b"X-Request-ID: abc\rX-Injected: 1\r\n",
    b"Authorization: Bearer sk-pro-\xff\xfe\r\n",
    b"X-Api-Key: \r\n",
    b"Authorization: Bearer " + b"A" * 15000 + b"\r\n",
    b"X-Evil: " + b"B" * 20000 + b"\r\n",
])
def test_nul_cr_and_oversized_headers_are_refused_without_500(world: World, untouched: None, header: bytes) -> None:
    body = json.dumps(chat("gpt-4o-mini")).encode()
    answer = _raw(world, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + header + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 401, 431), answer[:300]
    assert b"X-Injected" not in answer and b"Traceback" not in answer


def test_request_id_header_is_never_echoed_unless_sane(world: World) -> None:
    response = world.http().get(world.url + "/v1/models",
                                headers={**bearer(world.key), "X-Request-ID": "<script>alert(1)</script>"})
    assert response.status_code == 200
    assert "<" not in response.headers["X-Request-ID"]


def test_body_fields_that_redirect_or_recredential_are_dropped(world: World) -> None:
    before = len(world.upstream.requests())
    body = chat("gpt-4o-mini", api_base="http://127.0.0.1:1/steal", base_url="http://127.0.0.1:1/steal",
                api_key="sk-attacker-0000000000000000", headers={"Authorization": "Bearer attacker"},
                extra_headers={"Authorization": "Bearer attacker"}, extra_query={"x": "y"},
                organization="org-evil", proxies={"http": "http://127.0.0.1:1"})
    response = world.http().post(world.url + "/v1/chat/completions", json=body,
                                 headers={**bearer(world.key), "OpenAI-Organization": "org-evil",
                                          "Host": "evil.example", "X-Forwarded-Host": "evil.example"})
    assert response.status_code == 200
    [sent] = world.upstream.requests()[before:]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == f"Bearer {CANARY_UPSTREAM_SECRET}"
    assert "openai-organization" not in sent["headers"]
    assert set(sent["body"]) == {"model", "messages", "max_tokens", "stream"}


# -- keys ---------------------------------------------------------------------------------

def _key_headers(key: str) -> list[dict[str, str]]:
    return [{"Authorization": f"Bearer {key}"}, {"x-api-key": key}, {"X-API-Key": key}]


def test_every_invalid_key_gets_one_identical_401_body(world: World, untouched: None) -> None:
    expired, _, expired_id = world.new_key()
    revoked, _, revoked_id = world.new_key()
    deleted, deleted_user, _ = world.new_key()
    with world.engine.begin() as conn:  # an expiry in the past cannot be set through the API
        conn.execute(text("UPDATE api_keys SET expires_at = :t WHERE id = :i"),
                     {"t": datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1), "i": expired_id})
    world.admin.delete(f"/keys/{revoked_id}")
    world.admin.delete(f"/users/{deleted_user}")
    candidates = [
        "", "sk-", "Bearer", "sk-pro-" + "A" * 300, "sk-pro-\u202eevil", "sk-pro-\u200b" + "a" * 40,
        "' OR '1'='1' --", "sk-pro-x'; DROP TABLE api_keys; --", "%00", "sk-pro-" + "a" * 43,
        world.key[:-1], world.key + "x", world.key.upper(), expired, revoked, deleted,
    ]
    bodies = set()
    for candidate in candidates:
        for headers in _key_headers(candidate):
            try:
                response = world.http().post(world.url + "/v1/chat/completions", json=chat("gpt-4o-mini"),
                                             headers=headers)
            except UnicodeEncodeError:
                headers = {k: v.encode("utf-8").decode("latin-1") for k, v in headers.items()}
                response = world.http().post(world.url + "/v1/chat/completions", json=chat("gpt-4o-mini"),
                                             headers=headers)
            assert response.status_code == 401, (candidate, response.text)
            bodies.add(response.text)
    assert len(bodies) == 1
    assert json.loads(bodies.pop())["error"]["code"] == "invalid_api_key"


def test_suspended_user_gets_403_by_design(world: World, untouched: None) -> None:
    key, user_id, _ = world.new_key()
    world.admin.patch(f"/users/{user_id}", {"status": "suspended"})
    response = world.http().post(world.url + "/v1/chat/completions", json=chat("gpt-4o-mini"), headers=bearer(key))
    _clean(response, 403)
    assert response.json()["error"]["code"] == "account_suspended"


def test_revoked_key_fails_on_the_very_next_request_on_every_worker(world: World) -> None:
    key, user_id, key_id = world.new_key()
    model = world.backend()
    for _ in range(6):  # a fresh connection each time, spread over both workers
        response = requests.post(world.url + "/v1/chat/completions", json=chat(model), headers=bearer(key),
                                 timeout=10)
        assert response.status_code == 200
        world.saw(response.text)
    world.admin.delete(f"/keys/{key_id}")
    calls = world.upstream.stats()["total"]
    for _ in range(10):
        response = requests.post(world.url + "/v1/chat/completions", json=chat(model), headers=bearer(key),
                                 timeout=10)
        world.saw(response.text)
        assert response.status_code == 401
    assert world.upstream.stats()["total"] == calls
    assert world.counters(user_id)["requests"] == 6


def test_mislabelled_json_on_messages_is_415_in_anthropic_shape(world: World, untouched: None) -> None:
    body = json.dumps({"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    response = world.http().post(world.url + "/v1/messages", data=body,
                                 headers={"x-api-key": world.key, "Content-Type": "text/plain"})
    _clean(response, 415)
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_json_with_parameters_and_plus_json_types_are_accepted(world: World) -> None:
    model = world.backend()
    for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json"):
        response = world.http().post(world.url + "/v1/chat/completions", data=json.dumps(chat(model)),
                                     headers={**bearer(world.key), "Content-Type": content_type})
        assert response.status_code == 200, (content_type, response.text[:300])
