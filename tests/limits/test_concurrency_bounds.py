"""Limits that hold against a hostile client under concurrency (issue 15, findings 5, 6
and the per-user / IPv6 items of 11), through a real gunicorn gateway with two gevent
workers, real memcached, the real database and the fake upstream.

The bound under test (README, Accounting guarantees): a request reserves its prompt
estimate plus its output cap x choices; when the client gives no cap the reserved budget
is sent to the upstream as its cap, so the reservation is a true upper bound whatever
the request's shape. Tokens per minute are reserved the same way at admission.
"""
from __future__ import annotations

from typing import Any

import requests
from sqlalchemy import create_engine, text

from gateway.fake_upstream.prompts import count_prompt_tokens
from gateway.proxy.usage_parser import estimate_request_tokens
from tests.fixtures.deployment import Deployment
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
