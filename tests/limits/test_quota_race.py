"""50 requests released together against a quota that fits exactly 2: the conditional
UPDATE admits exactly 2 across both gunicorn workers, on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from gateway.proxy.usage_parser import estimate_request_tokens
from tests.fixtures.deployment import Deployment
from tests.limits.conftest import chat, set_user, together

MAX_TOKENS = 20
PROMPT = "[[delay:1.5]] hi"  # admitted requests hold their reservation while the rest arrive
RESERVED = estimate_request_tokens("openai", {"messages": [{"role": "user", "content": PROMPT}]}) + MAX_TOKENS


def _usage(migrated: str, user_id: int) -> tuple[int, int, int, int]:
    engine = create_engine(migrated)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT SUM(tokens_in + tokens_out), SUM(requests), SUM(reserved_tokens), "
                                "SUM(reserved_requests) FROM usage_counters WHERE user_id = :u"), {"u": user_id}).one()
    engine.dispose()
    return tuple(int(v or 0) for v in row)  # type: ignore[return-value]


@pytest.mark.parametrize("limit", ["tokens", "requests"])
def test_fifty_parallel_requests_against_a_quota_for_two_admit_exactly_two(roomy: Deployment, migrated: str,
                                                                           limit: str):
    if limit == "tokens":
        quota = 3 * RESERVED - 1  # two reservations fit, a third does not
        set_user(roomy, token_quota=quota, quota_period="monthly")
    else:
        quota = 2
        set_user(roomy, request_quota=2, quota_period="monthly")
    results = together(50, lambda i: chat(roomy, PROMPT, max_tokens=MAX_TOKENS))
    statuses = sorted(getattr(r, "status_code", repr(r)) for r in results)
    assert statuses == [200] * 2 + [402] * 48
    roomy.wait_for_logs(2, status=200)
    refused = next(r for r in results if r.status_code == 402).json()["error"]
    assert refused["type"] == "insufficient_quota" and refused["code"] == "quota_exceeded"
    assert refused["quota"]["resets_at"] and f"Quota exhausted ({limit})" in refused["message"]
    tokens, requests_, reserved_tokens, reserved_requests = _usage(migrated, roomy.user_id)
    assert (requests_, reserved_tokens, reserved_requests) == (2, 0, 0)
    used = tokens if limit == "tokens" else requests_
    overspend = max(0, used - quota)
    assert overspend == 0, f"overspent {limit} by {overspend}"
