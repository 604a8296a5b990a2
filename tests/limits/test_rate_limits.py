"""Rate limits on memcached behind a real gunicorn with 2 gevent workers: each limit
of the stack bites on its own, exactly, whichever worker serves the request."""
from __future__ import annotations

import os
import time
from pathlib import Path

import requests

from tests.fixtures.deployment import Deployment
from tests.limits.conftest import chat, set_tier, together


def _established_per_worker(master_pid: int, port: int) -> list[int]:
    """Open client connections to ``port`` held by each gunicorn worker (from /proc)."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    established: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "01":
            established.add(fields[9])
    counts = []
    for pid in children:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        counts.append(len(inodes & established))
    return counts


def test_five_rpm_tier_admits_exactly_five_of_twenty_parallel_requests_across_both_workers(tight: Deployment):
    set_tier(tight, rpm=5)
    port = int(tight.url.rsplit(":", 1)[1])
    spread: list[int] = []

    def watch() -> None:
        time.sleep(0.4)
        spread.extend(_established_per_worker(tight.gateway.process.pid, port))

    # 20 addresses, so only the key limit can bite; the delay holds admitted ones open
    results = together(21, lambda i: watch() if i == 20 else chat(tight, "[[delay:1]] hi", address=f"10.1.0.{i}"))
    statuses = sorted(r.status_code for r in results[:20])
    assert statuses == [200] * 5 + [429] * 15
    assert len(spread) == 2 and all(count > 0 for count in spread), spread
    refused = next(r for r in results[:20] if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_key"
    assert refused.headers["X-RateLimit-Limit"] == "5" and refused.headers["X-RateLimit-Remaining"] == "0"


def test_address_limit_bites_for_that_address_only(tight: Deployment):
    statuses = [chat(tight, address="10.2.0.1").status_code for _ in range(10)]
    assert statuses == [200] * 8 + [429] * 2
    blocked = chat(tight, address="10.2.0.1")
    assert blocked.json()["error"]["code"] == "rate_limit_ip"
    assert "the limit for your address is 8 requests per minute" in blocked.json()["error"]["message"]
    assert chat(tight, address="10.2.0.2").status_code == 200


def test_address_limit_counts_requests_with_bad_keys_too(tight: Deployment):
    for _ in range(2):
        assert chat(tight, key="sk-pro-wrong" + "x" * 32, address="10.3.0.1").status_code == 401
    statuses = [chat(tight, address="10.3.0.1").status_code for _ in range(7)]
    assert statuses == [200] * 6 + [429]


def test_global_cap_bites_across_addresses(tight: Deployment):
    results = together(34, lambda i: chat(tight, address=f"10.4.{i}.1"))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] * 30 + [429] * 4
    refused = next(r for r in results if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_global"
    assert refused.headers["X-RateLimit-Limit"] == "30"


def test_failed_key_authentications_are_throttled_far_below_the_address_limit(tight: Deployment):
    bad = "sk-pro-" + "g" * 40
    statuses = [chat(tight, key=bad, address="10.5.0.1").status_code for _ in range(6)]
    assert statuses == [401, 401, 401, 429, 429, 429]  # the address limit (8/minute) is not reached
    blocked = chat(tight, key=bad, address="10.5.0.1")
    assert blocked.json()["error"]["code"] == "auth_rate_limited"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 61
    assert chat(tight, key=bad, address="10.5.0.2").status_code == 401  # other addresses keep their allowance
    # a blocked address learns nothing, not even that a guess was right
    assert chat(tight, address="10.5.0.1").status_code == 429


def test_admin_api_failed_auth_throttle_holds_across_workers(tight: Deployment):
    url = tight.url + "/api/admin/users"
    statuses = [requests.get(url, headers={"X-Admin-Key": "wrong-token-123456789", "X-Forwarded-For": "10.6.0.1"},
                             timeout=10).status_code for _ in range(6)]
    assert statuses == [401] * 4 + [429] * 2


def test_headers_count_down_and_429_says_which_limit_and_when_in_callers_format(tight: Deployment):
    set_tier(tight, rpm=3)
    before = time.time()
    answers = [chat(tight, address="10.7.0.1") for _ in range(3)]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
    assert {a.headers["X-RateLimit-Limit"] for a in answers} == {"3"}
    reset = int(answers[0].headers["X-RateLimit-Reset"])
    # the clock-aligned minute holding the requests (every worker announces the same end)
    assert reset % 60 == 0 and before < reset <= time.time() + 61
    assert {a.headers["X-RateLimit-Reset"] for a in answers} == {str(reset)}

    openai = chat(tight, address="10.7.0.1")
    assert openai.status_code == 429
    retry = int(openai.headers["Retry-After"])
    assert 1 <= retry <= 60 and abs(time.time() + retry - reset) <= 2
    assert openai.headers["X-RateLimit-Limit"] == "3" and openai.headers["X-RateLimit-Remaining"] == "0"
    assert openai.headers["X-RateLimit-Reset"] == str(reset)
    error = openai.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_key"
    assert error["message"] == f"Rate limit exceeded: this key's limit is 3 requests per minute; retry in {retry} s"

    anthropic = requests.post(tight.url + "/v1/messages", timeout=10, headers={
        "x-api-key": tight.key, "anthropic-version": "2023-06-01", "X-Forwarded-For": "10.7.0.1"},
        json={"model": "claude-3-5-haiku", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    assert anthropic.status_code == 429 and "Retry-After" in anthropic.headers
    assert anthropic.json()["type"] == "error" and anthropic.json()["error"]["type"] == "rate_limit_error"
    assert "this key's limit is 3 requests per minute" in anthropic.json()["error"]["message"]


def test_daily_limit_bites_after_the_minute_limit_allows(tight: Deployment):
    set_tier(tight, rpm=100, rpd=2)
    statuses = [chat(tight, address=f"10.8.0.{i}").status_code for i in range(3)]
    assert statuses == [200, 200, 429]
    refused = chat(tight, address="10.8.0.9")
    assert refused.json()["error"]["code"] == "rate_limit_key_day"
    assert "this key's daily limit is 2 requests per day" in refused.json()["error"]["message"]
    # the daily window is the UTC day: it ends at the next midnight UTC
    midnight = (int(time.time()) // 86400 + 1) * 86400
    assert abs(time.time() + int(refused.headers["Retry-After"]) - midnight) <= 2


def test_tokens_per_minute_are_counted_after_each_response_and_checked_before_the_next(tight: Deployment):
    set_tier(tight, rpm=100, tpm=40)
    # the fake reports prompt words + 16 completion tokens: 3 + 16 = 19 per request
    assert chat(tight, "one two three", address="10.9.0.1").status_code == 200
    tight.wait_for_logs(1)
    assert chat(tight, "one two three", address="10.9.0.2").status_code == 200
    tight.wait_for_logs(2)
    assert chat(tight, "one two three", address="10.9.0.3").status_code == 200  # 38 < 40: admitted
    tight.wait_for_logs(3)
    refused = chat(tight, "one two three", address="10.9.0.4")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_key_tpm"
    assert "this key's token limit is 40 tokens per minute" in refused.json()["error"]["message"]
    assert refused.headers["X-RateLimit-Limit"] == "40" and refused.headers["X-RateLimit-Remaining"] == "0"


def test_no_announced_window_admits_more_than_rpm_even_around_its_end(tight: Deployment, memcached):
    """Issue 17: memcached's whole-second expiry clock dropped a window's counter up to
    ~1.7 s before the reset the gateway announced, so a new count started while answers
    still carried the old reset (rpm+1, rpm+2 in one announced window). Hit the key
    right up to and past the announced end: per announced X-RateLimit-Reset, at most rpm
    admissions, and the reset is the clock-aligned window end every worker agrees on."""
    set_tier(tight, rpm=3)
    seen: list[tuple[int, int]] = []  # (status, announced reset)
    address = iter(f"10.17.{i // 200}.{i % 200}" for i in range(10_000))

    def hit() -> None:
        response = chat(tight, address=next(address))
        assert response.status_code in (200, 429), response.text[:300]
        seen.append((response.status_code, int(response.headers["X-RateLimit-Reset"])))

    for _ in range(4):
        hit()
    first_reset = seen[0][1]
    assert first_reset % 60 == 0, first_reset  # the window of floor(t / 60), not of the first hit
    assert {reset for _, reset in seen} == {first_reset}
    assert [status for status, _ in seen] == [200, 200, 200, 429]
    time.sleep(max(0.0, first_reset - 2.5 - time.time()))
    while time.time() < first_reset + 1.5:
        hit()
        time.sleep(0.25)
    admitted: dict[int, int] = {}
    for status, reset in seen:
        if status == 200:
            admitted[reset] = admitted.get(reset, 0) + 1
    assert admitted[first_reset] == 3, seen
    assert set(admitted) <= {first_reset, first_reset + 60}, seen
    assert admitted.get(first_reset + 60, 0) <= 3, seen
    assert admitted.get(first_reset + 60, 0) >= 1, seen  # the next window did open on time
