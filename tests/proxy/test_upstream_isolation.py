"""Tenants stay isolated from each other and from the upstream's echoes, against a
hostile upstream a test starts itself (issue 15, findings 1, 3, 7 and 11).

In-process (one app = one worker, so "the same worker's pooled session" is certain,
not a matter of which gunicorn worker took the connection), with real HTTP to the
hostile upstream: a cookie setter, a credential echo in headers and bodies (plain,
chunked split inside the secret, gzip), a gzip bomb, and an LLM endpoint that echoes
the key it got. Two tenants are two users with their own keys and their own HTTP
clients (no shared cookie jar on the client side).
"""
from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from gateway.extensions import db
from gateway.models import UpstreamKey
from gateway.portal.connection_test import probe as probe_connection
from gateway.proxy import forward, prober
from gateway.worker_state import state_of
from tests.fixtures.http_server import serving

SECRET = "sk-hostile-upstream-CANARY-7e6d5c4b3a2918"
LLM_SECRET = "sk-llm-upstream-CANARY-0a1b2c3d4e5f6789"
BOMB = zlib.compressobj(9, zlib.DEFLATED, 31)
BOMB_BYTES = b"".join(BOMB.compress(b"\0" * (1 << 20)) for _ in range(64)) + BOMB.flush()  # 64 MiB of zeros


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.lock:
            self.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                              "body": body})
        return body

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunked(self, pieces: list[bytes], content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        self._record()
        sent = self.headers.get("Authorization", "").removeprefix("Bearer ")
        path = self.path.split("?")[0]
        if path.endswith("/set"):
            self._send(200, b"set", [("Set-Cookie", "tenant=A-private-session; Path=/"),
                                     ("Set-Cookie", "pref=dark; Path=/; Expires=Wed, 09 Jun 2027 10:18:14 GMT"),
                                     ("Set-Cookie", "session=upstream-overwrite; Path=/")])
        elif path.endswith("/echo-secret"):
            self._send(200, json.dumps({"you_sent": sent, "prefix": sent[:12]}).encode(),
                       [("Content-Type", "application/json"), ("ETag", f'"{sent}"'),
                        ("Content-Disposition", f"attachment; filename={sent[:12]}.txt")])
        elif path.endswith("/chunked-secret"):
            whole = f"token={sent};".encode()
            cut = 6 + len(sent) // 2
            self._chunked([whole[:cut], whole[cut:]], "text/plain")
        elif path.endswith("/gzip-secret"):
            self._send(200, gzip.compress(json.dumps({"key": sent, "pad": "x" * 5000}).encode()),
                       [("Content-Type", "application/json"), ("Content-Encoding", "gzip")])
        elif path.endswith("/bomb"):
            self._send(200, BOMB_BYTES, [("Content-Type", "application/octet-stream"), ("Content-Encoding", "gzip")])
        else:
            self._send(200, b"{}", [("Content-Type", "application/json")])

    def do_POST(self) -> None:
        body = json.loads(self._record() or b"{}")
        sent = self.headers.get("Authorization", "").removeprefix("Bearer ")
        text = f"the gateway sent me {sent} ({sent[:12]})"
        if body.get("stream"):
            events = [b'data: {"choices":[{"index":0,"delta":{"content":' + json.dumps(text).encode() + b"}}]}\n\n",
                      b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n',
                      b"data: [DONE]\n\n"]
            stream = b"".join(events)
            cut = stream.index(sent.encode()) + 10  # the secret split across two chunks
            self._chunked([stream[:cut], stream[cut:]], "text/event-stream")
            return
        answer = {"id": "x", "object": "chat.completion",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
        if body.get("model") == "gpt-gzip":  # compressed though the gateway asked for identity
            self._send(200, gzip.compress(json.dumps(answer).encode()),
                       [("Content-Type", "application/json"), ("Content-Encoding", "gzip")])
            return
        self._send(200, json.dumps(answer).encode(), [("Content-Type", "application/json")])


@dataclass
class World:
    app: Any
    url: str
    backends: dict[str, dict[str, Any]]
    keys: dict[str, str]

    def client(self) -> Any:
        return self.app.test_client(use_cookies=False)

    def get(self, tenant: str, path: str, **headers: str) -> Any:
        # buffered: the relay runs to its end (and accounts) before the next request
        return self.client().get(path, headers={"Authorization": f"Bearer {self.keys[tenant]}", **headers},
                                 buffered=True)

    def seen(self) -> list[dict[str, Any]]:
        with Hostile.lock:
            return list(Hostile.seen)


@pytest.fixture
def world(app: Any, admin_headers: dict[str, str]) -> Iterator[World]:
    Hostile.seen = []
    with serving(Hostile) as url:
        admin = app.test_client()

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            response = admin.post("/api/admin" + path, json=body, headers=admin_headers)
            assert response.status_code == 201, response.get_data(as_text=True)
            return response.get_json()

        backends = {
            "files": post("/backends", {"name": "files", "kind": "http", "base_url": url + "/a",
                                        "health_check_path": "/set"}),
            "same-host": post("/backends", {"name": "same-host", "kind": "http", "base_url": url + "/b"}),
            "cookie-jar": post("/backends", {"name": "cookie-jar", "kind": "http", "base_url": url + "/c",
                                             "relay_cookies": True}),
            "llm": post("/backends", {"name": "llm", "kind": "openai", "base_url": url + "/v1",
                                      "models": ["gpt-*"]}),
        }
        for name in ("files", "same-host", "cookie-jar"):
            post(f"/backends/{backends[name]['id']}/keys", {"secret": SECRET})
        post(f"/backends/{backends['llm']['id']}/keys", {"secret": LLM_SECRET})
        keys = {tenant: post("/keys", {"name": f"tenant-{tenant}", "tier": "pro"})["key"] for tenant in "AB"}
        yield World(app, url, backends, keys)


def test_a_cookie_set_for_tenant_a_is_never_sent_on_tenant_b_s_requests_or_to_another_backend(world: World) -> None:
    first = world.get("A", "/proxy/files/set")
    assert first.status_code == 200 and first.headers.getlist("Set-Cookie") == []  # relay_cookies is off
    world.get("B", "/proxy/files/show")
    world.get("B", "/proxy/same-host/show")
    world.get("A", "/proxy/files/show")
    later = world.seen()[1:]
    assert [r["path"] for r in later] == ["/a/show", "/b/show", "/a/show"]
    assert all("cookie" not in r["headers"] for r in later), later
    with world.app.app_context():
        assert len(forward.session().cookies) == 0


def test_relay_cookies_hands_set_cookie_to_the_client_and_stores_none(world: World) -> None:
    first = world.get("A", "/proxy/cookie-jar/set")
    assert first.headers.getlist("Set-Cookie") == [
        "tenant=A-private-session; Path=/", "pref=dark; Path=/; Expires=Wed, 09 Jun 2027 10:18:14 GMT"]
    # the portal session cookie name is KeyGate's own: never set by an upstream
    world.get("B", "/proxy/cookie-jar/show")
    world.get("A", "/proxy/cookie-jar/show", Cookie="session=portal-session; tenant=A-private-session")
    b_request, a_request = world.seen()[1:]
    assert "cookie" not in b_request["headers"]
    assert a_request["headers"]["cookie"] == "tenant=A-private-session"  # the client's own, minus KeyGate's


def test_the_client_s_cookie_is_dropped_for_a_backend_without_relay_cookies(world: World) -> None:
    world.get("A", "/proxy/files/show", Cookie="tenant=A-private-session")
    [request] = world.seen()
    assert "cookie" not in request["headers"]


def test_prober_and_test_connection_store_no_cookie(world: World) -> None:
    files = world.backends["files"]
    world.get("A", "/proxy/files/warm")  # loads the snapshot the second opinion reads
    with world.app.app_context():
        key = db.session.query(UpstreamKey).filter_by(backend_id=files["id"]).one()
        opinion = prober.second_opinion(state_of(world.app), files["id"], key.id, SECRET)
        result = probe_connection(key)
        assert len(forward.session().cookies) == 0
    assert opinion is not None and opinion.ok and result.ok
    world.get("B", "/proxy/same-host/show")
    probes_and_b = world.seen()[1:]
    assert [r["path"] for r in probes_and_b] == ["/a/set", "/a/set", "/b/show"]
    assert "cookie" not in probes_and_b[-1]["headers"]


def test_client_credentials_addresses_and_the_key_query_parameter_never_reach_the_upstream(world: World) -> None:
    key = world.keys["A"]
    response = world.client().get(
        f"/proxy/files/show?key={key}&size=large&api_key={key}",
        headers={"Authorization": f"Bearer {key}", "x-goog-api-key": key, "Forwarded": "for=6.6.6.6",
                 "X-Real-IP": "6.6.6.6", "X-Forwarded-For": "6.6.6.6", "api-key": key,
                 "x-amz-security-token": "token-of-the-client", "Proxy-Authorization": "Basic c2VjcmV0",
                 "X-Custom": "kept"}, buffered=True)
    assert response.status_code == 200, response.get_data(as_text=True)
    [request] = world.seen()
    headers = request["headers"]
    assert request["path"] == "/a/show?size=large"
    for name in ("x-goog-api-key", "forwarded", "x-real-ip", "x-forwarded-for", "api-key", "x-amz-security-token",
                 "proxy-authorization"):
        assert name not in headers, name
    assert headers["authorization"] == f"Bearer {SECRET}" and headers["x-custom"] == "kept"
    assert key not in json.dumps(request["headers"])


def test_an_echoed_secret_is_scrubbed_from_pass_through_headers_and_bodies(world: World) -> None:
    for path in ("/proxy/files/echo-secret", "/proxy/files/chunked-secret", "/proxy/files/gzip-secret"):
        response = world.get("A", path)
        assert response.status_code == 200
        seen = response.get_data() + json.dumps(dict(response.headers)).encode()
        assert SECRET[:9].encode() not in seen, (path, seen[:300])
        assert SECRET[-9:].encode() not in seen
        assert b"[redacted]" in seen
    echoed = world.get("A", "/proxy/files/echo-secret")
    assert echoed.get_json() == {"you_sent": "[redacted]", "prefix": "[redacted]"}
    assert echoed.headers["ETag"] == '"[redacted]"'
    assert echoed.headers["Content-Disposition"] == "attachment; filename=[redacted].txt"
    assert world.get("A", "/proxy/files/chunked-secret").get_data() == b"token=[redacted];"
    unzipped = world.get("A", "/proxy/files/gzip-secret")
    assert "Content-Encoding" not in unzipped.headers and unzipped.get_json()["key"] == "[redacted]"
    assert world.seen()[0]["headers"]["accept-encoding"] == "identity"


def test_a_gzip_bomb_is_cut_at_the_ratio_cap(world: World) -> None:
    response = world.get("A", "/proxy/files/bomb")
    body = response.get_data()
    assert response.status_code == 200
    assert 0 < len(body) < 8 << 20  # stopped early: 64 MiB would have followed


def test_an_echoed_secret_is_scrubbed_from_llm_answers_streamed_or_not(world: World) -> None:
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
            "API_BASE": "http://attacker.example", "Base_Url": "http://attacker.example",
            "api_base ": "http://attacker.example"}
    for stream in (False, True):
        response = world.client().post("/v1/chat/completions", json={**chat, "stream": stream},
                                       headers={"Authorization": f"Bearer {world.keys['A']}"}, buffered=True)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_data()
        assert LLM_SECRET[:9].encode() not in body and b"[redacted] ([redacted])" in body, body
    for request in world.seen():
        sent = json.loads(request["body"])
        assert not {"API_BASE", "Base_Url", "api_base "} & set(sent), sent


def test_a_gzip_encoded_llm_answer_is_relayed_decoded_and_its_usage_read(world: World,
                                                                         admin_headers: dict[str, str]) -> None:
    response = world.client().post("/v1/chat/completions", buffered=True,
                                   json={"model": "gpt-gzip", "messages": [{"role": "user", "content": "hi"}],
                                         "max_tokens": 5},
                                   headers={"Authorization": f"Bearer {world.keys['A']}"})
    assert response.status_code == 200 and "Content-Encoding" not in response.headers
    answer = response.get_json()
    assert answer["choices"][0]["message"]["content"].startswith("the gateway sent me [redacted]")
    [row] = world.client().get("/api/admin/logs", headers=admin_headers).get_json()["items"]
    assert (row["tokens_in"], row["tokens_out"], row["estimated"]) == (3, 5, False)
