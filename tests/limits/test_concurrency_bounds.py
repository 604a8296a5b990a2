"""Limits that hold against a hostile client under concurrency (issue 15, findings 5, 6
and the per-user / IPv6 items of 11), through a real gunicorn gateway with two gevent
workers, real memcached, the real database and the fake upstream.

The bound under test (README, Accounting guarantees): a request reserves its prompt
estimate plus its output cap x choices; when the client gives no cap the reserved budget
is sent to the upstream as its cap, so the reservation is a true upper bound whatever
the request's shape. Tokens per minute are reserved the same way at admission.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

from gateway.fake_upstream.prompts import count_prompt_tokens
from gateway.proxy import sweep
from gateway.proxy.usage_parser import estimate_request_tokens
from tests.conftest import make_env
from tests.fixtures.deployment import Deployment, deploy
from tests.fixtures.gateway_server import start_gateway
from tests.fixtures.http_server import serving
from tests.fixtures.memcached import MemcachedServer
from tests.limits.conftest import chat, set_tier, set_user, together

GREEDY = "[[tokens:50000]] [[delay:1.5]] write a very long essay"  # asks the fake for 50,000 output tokens


def _spent(migrated: str, user_id: int) -> tuple[int, int, int]:
    engine = create_engine(migrated)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT SUM(tokens_in + tokens_out), SUM(reserved_tokens), SUM(bytes) "
                                "FROM usage_counters WHERE user_id = :u"), {"u": user_id}).one()
    engine.dispose()
    return tuple(int(v or 0) for v in row)  # type: ignore[return-value]


def _statuses(results: list[Any]) -> list[int | str]:
    return sorted(getattr(r, "status_code", repr(r)) for r in results)


def test_concurrent_requests_without_max_tokens_never_spend_more_than_the_token_quota(roomy: Deployment,
                                                                                        migrated: str):
    quota = 20_000
    set_user(roomy, token_quota=quota, quota_period="monthly")
    results = together(12, lambda i: chat(roomy, GREEDY))
    admitted = sum(1 for r in results if getattr(r, "status_code", 0) == 200)
    assert admitted >= 1 and _statuses(results).count(402) == 12 - admitted, _statuses(results)
    roomy.wait_for_logs(admitted, status=200)
    spent, reserved, _ = _spent(migrated, roomy.user_id)
    assert reserved == 0
    # The prompt estimate is not below the fake's word count here, so the bound is exact.
    body = {"messages": [{"role": "user", "content": GREEDY}]}
    assert estimate_request_tokens("openai", body) >= count_prompt_tokens(body)
    assert spent <= quota, f"{admitted} requests spent {spent} tokens of a {quota}-token quota"
    # Each admitted request was sent its reserved budget as the upstream's output cap.
    caps = [r["body"].get("max_completion_tokens") for r in roomy.upstream.requests()]
    assert len(caps) == admitted and all(isinstance(c, int) and 0 < c <= 4096 for c in caps), caps


def test_a_client_cap_is_forwarded_unchanged_and_n_multiplies_the_reservation(roomy: Deployment, migrated: str):
    prompt = "count to three"
    estimate = estimate_request_tokens("openai", {"messages": [{"role": "user", "content": prompt}]})
    set_user(roomy, token_quota=estimate + 2 * 20, quota_period="monthly")  # n=2 fits, n=3 does not

    def ask(n: int) -> requests.Response:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "max_tokens": 20, "n": n}
        return requests.post(roomy.url + "/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {roomy.key}"}, timeout=30)

    refused = ask(3)
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["code"] == "quota_exceeded"
    bad = ask(0)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "n"
    assert ask(1).status_code == 200
    sent = roomy.upstream.requests()[-1]["body"]
    assert sent["max_tokens"] == 20 and "max_completion_tokens" not in sent


def test_concurrent_requests_cannot_all_pass_a_small_tokens_per_minute_limit(roomy: Deployment):
    set_tier(roomy, rpm=1000, tpm=100)
    results = together(20, lambda i: chat(roomy, "[[delay:1.5]] hello there"))
    statuses = _statuses(results)
    assert statuses == [200] + [429] * 19, statuses
    refused = next(r for r in results if r.status_code == 429).json()["error"]
    assert refused["code"] == "rate_limit_key_tpm"


def test_a_users_keys_share_one_rate_limit_window(tight: Deployment):
    set_tier(tight, rpm=4)
    second = tight.admin.post(f"/users/{tight.user_id}/keys", {"label": "second"})["key"]
    statuses = [chat(tight, key=(tight.key, second)[i % 2], address=f"10.21.0.{i}").status_code for i in range(6)]
    assert statuses == [200] * 4 + [429] * 2


def test_ipv6_addresses_of_one_slash_64_share_the_address_limit(tight: Deployment):
    set_tier(tight, rpm=1000)
    statuses = [chat(tight, address=f"2001:db8:15:64::{i:x}").status_code for i in range(1, 11)]
    assert statuses == [200] * 8 + [429] * 2  # IP_RPM is 8 on the tight gateway
    assert chat(tight, address="2001:db8:15:65::1").status_code == 200  # the next /64 is someone else


# --- finding 6: the byte quota bounds responses and chunked uploads as the bytes flow ---

BYTE_QUOTA = 100_000


class _Hostile(BaseHTTPRequestHandler):
    """Big answers without a declared length: ``/chunked/N`` (chunked octets), ``/sse/N``
    (an event stream of N events of ~1 kB)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        kind, _, count = self.path.strip("/").partition("/")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if kind == "sse" else "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = (b"data: " + b"x" * 1000 + b"\n\n") if kind == "sse" else bytes(range(256)) * 256
        try:
            for _ in range(int(count)):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the gateway stopped reading: that is the point

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    with serving(_Hostile) as url:
        yield url


@pytest.fixture
def byte_limited(roomy: Deployment, hostile: str) -> Deployment:
    set_user(roomy, byte_quota=BYTE_QUOTA, quota_period="monthly")
    roomy.admin.post("/backends", {"name": "blobs", "kind": "http", "base_url": roomy.upstream.url})
    roomy.admin.post("/backends", {"name": "hostile", "kind": "http", "base_url": hostile})
    return roomy


def _get(deployment: Deployment, path: str) -> requests.Response:
    return requests.get(f"{deployment.url}/proxy/{path}", headers={"X-API-Key": deployment.key}, timeout=30,
                        stream=True)


def test_a_declared_download_larger_than_the_byte_quota_is_refused_before_its_first_byte(byte_limited: Deployment,
                                                                                         migrated: str):
    response = _get(byte_limited, "blobs/bytes/5000000")
    assert response.status_code == 402, response.status_code
    assert response.json()["error"]["code"] == "quota_exceeded" and "bytes" in response.json()["error"]["message"]
    byte_limited.wait_for_logs(1)
    assert _spent(migrated, byte_limited.user_id)[1:] == (0, 0)  # nothing reserved, nothing relayed


@pytest.mark.parametrize("kind", ["chunked", "sse"])
def test_an_undeclared_download_stops_at_the_byte_quota(byte_limited: Deployment, migrated: str, kind: str):
    response = _get(byte_limited, f"hostile/{kind}/{5_000_000 // 65536 if kind == 'chunked' else 5000}")
    assert response.status_code == 200
    received = b"".join(response.iter_content(65536))
    assert len(received) <= BYTE_QUOTA + 1000, len(received)  # + the in-band error event
    if kind == "sse":
        last = received.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        assert last.startswith(b"data: ") and json.loads(last[6:])["error"]["code"] == "quota_exceeded"
    [row] = byte_limited.wait_for_logs(1)
    assert row["outcome"] == "quota_exceeded"
    _, reserved, spent_bytes = _spent(migrated, byte_limited.user_id)
    assert reserved == 0 and spent_bytes <= BYTE_QUOTA, spent_bytes


def test_chunked_uploads_cannot_pass_the_byte_quota(byte_limited: Deployment, migrated: str):
    byte_limited.admin.post("/backends", {"name": "sink", "kind": "http",
                                          "base_url": byte_limited.upstream.url + "/echo"})

    def upload(i: int) -> Any:
        chunks = (b"u" * 10_000 for _ in range(50))  # 500 kB, no Content-Length: chunked
        try:
            return requests.post(f"{byte_limited.url}/proxy/sink/up{i}", data=chunks, timeout=30,
                                 headers={"X-API-Key": byte_limited.key}).status_code
        except requests.ConnectionError:
            return "reset"  # the gateway may close on a body it stopped reading

    statuses = [upload(i) for i in range(8)]
    assert 200 not in statuses, statuses
    assert 402 in statuses, statuses
    byte_limited.wait_for_logs(8)
    _, reserved, spent_bytes = _spent(migrated, byte_limited.user_id)
    assert reserved == 0 and spent_bytes <= BYTE_QUOTA, spent_bytes
    received = sum(r["body_len"] for r in byte_limited.upstream.requests() if r["path"].startswith("/echo"))
    assert received <= BYTE_QUOTA, received


# --- finding 11: a request longer than the TTL keeps its reservation ---

@pytest.fixture
def renewing(app: Any, migrated: str, fake_upstream: Any, memcached: MemcachedServer,
             tmp_path: Path) -> Iterator[Deployment]:
    """A gateway whose live requests renew their reservation every second (after ``app``,
    whose fixture empties the database)."""
    env = make_env(migrated, tmp_path / "instance", RATELIMIT_STORAGE_URI=memcached.uri, UPSTREAM_READ_TIMEOUT="30",
                   RESERVATION_RENEW_SECONDS="1")
    server = start_gateway(env, tmp_path / "gateway.log", workers=1)
    try:
        yield deploy(server, fake_upstream, migrated)
    finally:
        server.stop()


def test_a_stream_outliving_the_sweeps_age_keeps_its_reservation(renewing: Deployment, app: Any, migrated: str):
    set_user(renewing, token_quota=1000, quota_period="monthly")
    started = time.monotonic()
    response = chat(renewing, "[[tokens:14]] [[interval:0.5]] tell a story", max_tokens=100, stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    while time.monotonic() - started < 4.5:  # the stream is still going: 14 tokens at 0.5 s each
        next(lines)
    with app.app_context():
        released = sweep.release_all_stale(3)  # what the sweep does with a 3-second TTL
    assert released == 0, "the sweep released a live request's reservation"
    assert _spent(migrated, renewing.user_id)[1] > 0  # still held while it streams
    for _ in lines:
        pass
    renewing.wait_for_logs(1)
    assert _spent(migrated, renewing.user_id)[1] == 0
