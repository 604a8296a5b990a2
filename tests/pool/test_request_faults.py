"""One request cannot take the pool down: an answer the request's *content* caused
(the fake's ``[[status:...]]`` / ``[[retry_after:...]]`` prompts make ANY key answer
that way) blames no key, while a key that is really broken (key tags, hostile
upstreams that answer every request alike) is still taken out - through a real
two-worker gunicorn gateway, so health travels through the database."""
from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway import create_app
from gateway.timeutil import utcnow
from tests.conftest import make_env
from tests.fixtures.http_server import serving
from tests.pool.conftest import Pool, secret

LAYOUTS = {
    # three keys over two providers: failover has someone to ask
    "three-keys": {"alpha": (0, {"k1": 1, "k2": 1}), "beta": (1, {"k3": 1})},
    # a single key: only the content-free probe can tell
    "one-key": {"alpha": (0, {"k1": 1})},
}


def _lay_out(pool: Pool, layout: str) -> list[str]:
    for name, (upstream, keys) in LAYOUTS[layout].items():
        pool.backend(name, upstream=upstream, keys={label: (secret(label), w) for label, w in keys.items()})
    return [label for _, keys in LAYOUTS[layout].values() for label in keys]


def _other_user(pool: Pool) -> str:
    return str(pool.admin.post("/keys", {"name": "bystander", "tier": "load"})["key"])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(("prompt", "client_status", "code"), [
    # the provider's refusal, passed on (its 36-character code is masked as key-shaped today)
    ("[[status:403]]", 403, "[redacted]"),
    ("[[status:429]] [[retry_after:3600]]", 429, "rate_limit_exceeded"),
    ("[[status:500]]", 502, "upstream_unavailable"),
])
def test_a_content_caused_failure_blames_no_key_and_others_keep_being_served(
        pool: Pool, layout: str, prompt: str, client_status: int, code: str):
    labels = _lay_out(pool, layout)
    pool.client_key()
    bystander = _other_user(pool)

    answers = [pool.chat(prompt) for _ in range(3)]  # three in a row: a streak would make a key unhealthy

    for answer in answers:
        assert answer.status_code == client_status
        assert answer.json()["error"]["code"] == code  # the API's error shape, never a 500 of ours
        assert secret("k1") not in answer.text
    if client_status == 429:
        assert 1 <= int(answers[0].headers["Retry-After"]) <= 301  # the hour is clamped to MAX_COOLDOWN_SECONDS
    for label in labels:
        key = pool.upstream_key(label)
        assert (key["state"], key["consecutive_failures"], key["cooldown_until"]) == ("healthy", 0, None), label
    assert [pool.chat(key=bystander).status_code for _ in range(20)] == [200] * 20
    posts = sum(1 for upstream in pool.upstreams for r in upstream.requests() if r["method"] == "POST")
    assert posts <= 3 * 2 + 20  # failover stops once the failure follows the request to a second key


def test_a_content_caused_403_on_the_anthropic_api_is_answered_in_its_shape_and_blames_no_key(pool: Pool):
    pool.backend("claude", upstream=0, kind="anthropic", keys={"a1": (secret("a1"), 1), "a2": (secret("a2"), 1)})
    pool.client_key()

    answer = requests.post(pool.url + "/v1/messages", timeout=30, headers={"x-api-key": pool.key},
                           json={"model": "claude-haiku-4-5", "max_tokens": 4,
                                 "messages": [{"role": "user", "content": "[[status:403]]"}]})

    assert answer.status_code == 403
    assert answer.json()["type"] == "error"
    assert answer.json()["error"]["type"] == "permission_error"
    assert {pool.upstream_key(label)["state"] for label in ("a1", "a2")} == {"healthy"}


def test_a_key_caused_401_takes_that_key_out_while_the_others_serve(pool: Pool, tmp_path: Path):
    pool.backend("alpha", upstream=0, keys={"good": (secret("good"), 1), "dead": (secret("dead-fail401"), 1)})
    pool.backend("beta", upstream=1, keys={"other": (secret("other"), 1)})
    pool.client_key()

    assert pool.burst(30) == [200] * 30  # the dead key's 401 is absorbed by failover

    assert pool.upstream_key("dead")["state"] == "unhealthy"  # out of rotation; the prober decides
    assert {pool.upstream_key(label)["state"] for label in ("good", "other")} == {"healthy"}
    app = create_app(env=make_env(pool.database_url, tmp_path / "instance"))
    assert app.test_cli_runner().invoke(args=["probe-upstreams"]).exit_code == 0
    assert pool.upstream_key("dead")["state"] == "disabled"  # confirmed by a request with no client content
    assert pool.burst(10) == [200] * 10


def test_a_single_dead_key_is_disabled_by_its_in_request_probe(pool: Pool):
    pool.backend("alpha", upstream=0, keys={"dead": (secret("dead-fail401"), 1)})
    pool.client_key()

    answer = pool.chat()

    assert answer.status_code == 502 and answer.json()["error"]["code"] == "upstream_unavailable"
    dead = pool.upstream_key("dead")
    assert dead["state"] == "disabled" and dead["last_error"] == "probe answered 401"
    assert [(r["method"], r["path"]) for r in pool.upstreams[0].requests()] == [
        ("POST", "/v1/chat/completions"), ("GET", "/v1/models")]


class _Hostile(BaseHTTPRequestHandler):
    """Answers every request - the chat POST and the probe's GET alike - with ``status``
    and ``body``, counting them, so the failure is the key's (or the provider's)."""
    status = 429
    headers_out: dict[str, str] = {}
    body: dict[str, Any] = {}
    seen: list[str]

    def _answer(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        payload = json.dumps(self.body).encode()
        self.send_response(self.status)
        for name, value in self.headers_out.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@pytest.fixture
def hour_long_429() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("HourLong", (_Hostile,), {
        "status": 429, "headers_out": {"Retry-After": "3600"}, "seen": seen,
        "body": {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}})
    with serving(handler) as url:
        yield url, seen


@pytest.fixture
def policy_403() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Policy", (_Hostile,), {
        "status": 403, "seen": seen,
        "body": {"error": {"message": "This prompt was blocked by the content policy",
                           "type": "invalid_request_error", "code": "content_policy_violation"}}})
    with serving(handler) as url:
        yield url, seen


def test_one_429_cannot_cool_a_key_for_longer_than_max_cooldown_seconds(pool: Pool, hour_long_429):
    url, seen = hour_long_429
    created = pool.admin.post("/backends", {"name": "limited", "kind": "openai", "base_url": url + "/v1",
                                            "models": ["gpt-*"]})
    key = pool.admin.post(f"/backends/{created['id']}/keys", {"secret": secret("limited")})
    pool.upstream_keys["limited"] = key["id"]
    pool.client_key()
    before = utcnow()

    answer = pool.chat()

    assert answer.status_code == 503 and 1 <= int(answer.headers["Retry-After"]) <= 301
    assert seen == ["POST /v1/chat/completions", "GET /v1/models"]  # the probe confirmed it: the key's 429
    [(end,)] = pool.sql("SELECT cooldown_until FROM upstream_keys WHERE id = :id", id=key["id"])
    end = end if isinstance(end, datetime) else datetime.fromisoformat(end)
    assert pool.upstream_key("limited")["state"] == "cooling_down"
    assert 290 <= (end - before).total_seconds() <= 301  # MAX_COOLDOWN_SECONDS (300), not 3600


def test_a_403_that_names_the_request_is_passed_on_without_failover_or_blame(pool: Pool, policy_403):
    url, seen = policy_403
    created = pool.admin.post("/backends", {"name": "strict", "kind": "openai", "base_url": url + "/v1",
                                            "models": ["gpt-*"]})
    for label in ("p1", "p2"):
        pool.upstream_keys[label] = pool.admin.post(f"/backends/{created['id']}/keys",
                                                    {"secret": secret(label), "label": label})["id"]
    pool.client_key()

    answer = pool.chat()

    assert answer.status_code == 403
    assert answer.json()["error"] == {**answer.json()["error"], "code": "content_policy_violation",
                                      "message": "This prompt was blocked by the content policy"}
    assert seen == ["POST /v1/chat/completions"]  # no second key, no probe
    assert {pool.upstream_key(label)["state"] for label in ("p1", "p2")} == {"healthy"}


def test_max_cooldown_seconds_is_validated(tmp_path: Path, migrated: str):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="MAX_COOLDOWN_SECONDS"):
        create_app(env=make_env(migrated, tmp_path / "instance", MAX_COOLDOWN_SECONDS="0"))


def test_the_bystander_is_not_throttled_by_the_hostile_client(pool: Pool):
    """Load shape of the attack: the hostile client fires many content-caused 403s at
    once from both workers while another user is served."""
    _lay_out(pool, "three-keys")
    pool.client_key()
    bystander = _other_user(pool)

    hostile = pool.burst(24, concurrency=8, content="[[status:403]]")

    assert set(hostile) == {403}
    with requests.Session() as http:
        served = [http.post(pool.url + "/v1/chat/completions", timeout=30,
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                            headers={"Authorization": f"Bearer {bystander}"}).status_code for _ in range(10)]
    assert served == [200] * 10
    assert {pool.upstream_key(label)["state"] for label in ("k1", "k2", "k3")} == {"healthy"}
