"""Smooth weighted round-robin across two providers: the split follows backend weight x
key weight, disabled keys and backends get nothing, and a stream uses one key."""
from __future__ import annotations

from tests.pool.conftest import Pool, secret

REQUESTS = 1000


def test_traffic_split_follows_backend_times_key_weights_over_1000_requests(pool: Pool):
    # effective weights: a1 = 2x1, a2 = 2x1, b1 = 1x1, b3 = 1x3  -> 2:2:1:3 of 8
    pool.backend("alpha", upstream=0, weight=2, keys={"a1": (secret("a1"), 1), "a2": (secret("a2"), 1)})
    pool.backend("beta", upstream=1, weight=1, keys={"b1": (secret("b1"), 1), "b3": (secret("b3"), 3)})
    pool.backend("gamma-off", upstream=1, weight=5, enabled=False, keys={"g": (secret("off-backend"), 1)})
    off = pool.backend("delta", upstream=0, weight=1, keys={"d": (secret("off-key"), 1)})
    pool.admin.patch(f"/upstream-keys/{pool.upstream_keys['d']}", {"enabled": False})
    assert off["id"]
    pool.client_key()

    statuses = pool.burst(REQUESTS, concurrency=4)

    assert statuses.count(200) == REQUESTS
    seen = pool.by_key()
    shares = {tag: seen.get(secret(tag), 0) / REQUESTS for tag in ("a1", "a2", "b1", "b3")}
    expected = {"a1": 2 / 8, "a2": 2 / 8, "b1": 1 / 8, "b3": 3 / 8}
    print("\nweight split over", REQUESTS, "requests:",
          {tag: f"{shares[tag]:.3f} (expected {expected[tag]:.3f})" for tag in shares})
    for tag, share in shares.items():
        assert abs(share - expected[tag]) <= 0.02, (tag, share, expected[tag])
    assert seen.get(secret("off-backend"), 0) == 0 and seen.get(secret("off-key"), 0) == 0
    assert sum(seen.values()) == REQUESTS  # no retries were needed


def test_a_stream_is_served_by_one_upstream_key_from_start_to_end(pool: Pool):
    pool.backend("alpha", upstream=0, keys={"a1": (secret("a1"), 1)})
    pool.backend("beta", upstream=1, keys={"b1": (secret("b1"), 1)})
    pool.client_key()

    with pool.chat("[[interval:0.02]]", stream=True) as response:
        events = [line for line in response.iter_lines() if line.startswith(b"data: ")]

    assert response.status_code == 200
    assert events[-1] == b"data: [DONE]"
    assert len(events) == 1 + 4 + 1 + 1  # role chunk, max_tokens 4 content chunks, finish chunk, [DONE]
    assert len(pool.by_key()) == 1 and sum(pool.by_key().values()) == 1
    [row] = pool.admin.get("/logs")["items"]
    assert row["upstream_key_id"] in pool.upstream_keys.values() and row["status"] == 200
