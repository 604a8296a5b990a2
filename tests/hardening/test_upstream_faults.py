"""Upstream faults, each against a backend of its own: the client gets a clean error in
its API's shape (before the first byte) or an explicit in-band error event (after it),
usage is recorded once, and a failed request charges nothing."""
from __future__ import annotations

import json
import time

from tests.fixtures.gateway_server import free_port

from .conftest import READ_TIMEOUT, World, bearer, chat


def _sse_events(raw: bytes) -> list[dict]:
    events = []
    for block in raw.decode("utf-8", "replace").split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: ") and line[6:].strip() not in ("", "[DONE]"):
                events.append(json.loads(line[6:]))
    return events


def _post(world: World, key: str, body: dict, timeout: float = 20) -> tuple[int, dict, dict, float]:
    started = time.monotonic()
    response = world.http().post(world.url + "/v1/chat/completions", json=body, headers=bearer(key), timeout=timeout)
    return response.status_code, response.json(), dict(response.headers), time.monotonic() - started


def _stream(world: World, key: str, body: dict, timeout: float = 20) -> tuple[int, bytes, float]:
    started = time.monotonic()
    with world.http().post(world.url + "/v1/chat/completions", json=body, headers=bearer(key), stream=True,
                           timeout=timeout) as response:
        raw = b"".join(response.iter_content(chunk_size=None))
        status = response.status_code
    world.saw(raw)
    return status, raw, time.monotonic() - started


def _assert_nothing_charged(world: World, user_id: int) -> None:
    counters = world.counters(user_id)
    assert counters == {"tokens": 0, "requests": 0, "reserved_tokens": 0, "reserved_requests": 0}


def test_upstream_5xx_answers_502_in_openai_shape_and_charges_nothing(world: World) -> None:
    model = world.backend(secret="sk-fail500-upstream")
    key, user_id, _ = world.new_key()
    status, body, _, _ = _post(world, key, chat(model))
    assert status == 502
    assert body["error"]["code"] == "upstream_unavailable"
    assert body["error"]["message"] == "The upstream provider failed (HTTP 500)"
    rows = world.wait_rows(user_id, 1)
    assert [(r["status"], r["outcome"]) for r in rows] == [(502, "rejected")]
    _assert_nothing_charged(world, user_id)


def test_a_429_the_request_caused_is_passed_on_with_retry_after_and_cools_no_key(world: World) -> None:
    # Changed rule (issue 15, finding 2): the fake's [[status:429]] directive makes ANY
    # key answer 429, which a content-free probe of the key does not reproduce - so it is
    # the request's 429: passed on as such, and the key is not put on a cooldown.
    model = world.backend()
    key, user_id, _ = world.new_key()
    status, body, headers, _ = _post(world, key, chat(model, "[[status:429]] [[retry_after:7]]"))
    assert status == 429
    assert headers["Retry-After"] == "8"  # the provider's 7 s, rounded up past the boundary
    assert body["error"]["message"] == "Fake failure 429"
    _assert_nothing_charged(world, user_id)
    # the key is not cooling down: the next request is served
    status, body, headers, _ = _post(world, key, chat(model))
    assert status == 200


def test_connection_refused_answers_502_fast(world: World) -> None:
    model = world.backend(base_url=f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    key, user_id, _ = world.new_key()
    status, body, _, elapsed = _post(world, key, chat(model))
    assert status == 502
    assert body["error"]["message"] == "Could not connect to the upstream provider"
    assert elapsed < 3
    _assert_nothing_charged(world, user_id)


def test_upstream_that_accepts_but_never_answers_times_out_with_504(world: World) -> None:
    model = world.backend(secret="sk-hang-upstream-key")
    key, user_id, _ = world.new_key()
    status, body, _, elapsed = _post(world, key, chat(model))
    assert status == 504
    assert body["error"]["message"] == "The upstream provider did not answer in time"
    assert READ_TIMEOUT - 0.5 < elapsed < READ_TIMEOUT + 4
    _assert_nothing_charged(world, user_id)


def test_reset_before_headers_answers_502(world: World) -> None:
    model = world.backend(secret="sk-reset-upstream-key")
    key, user_id, _ = world.new_key()
    status, body, _, _ = _post(world, key, chat(model))
    assert status == 502 and body["error"]["code"] == "upstream_unavailable"
    _assert_nothing_charged(world, user_id)


def test_reset_after_n_events_ends_stream_with_error_event_and_records_partial_usage(world: World) -> None:
    model = world.backend()
    key, user_id, _ = world.new_key()
    status, raw, _ = _stream(world, key, chat(model, "[[reset_after:3]] [[tokens:10]]", stream=True))
    assert status == 200
    events = _sse_events(raw)
    assert sum(1 for e in events if e.get("choices")) >= 3
    assert events[-1]["error"]["code"] == "stream_interrupted"
    assert b"[DONE]" not in raw
    [row] = world.wait_rows(user_id, 1)
    assert row["outcome"] == "upstream_error" and row["estimated"]
    assert row["tokens_out"] >= 1
    counters = world.counters(user_id)
    assert counters["tokens"] == row["tokens_in"] + row["tokens_out"] and counters["requests"] == 1
    assert counters["reserved_tokens"] == 0


def test_stall_mid_stream_is_ended_by_idle_timeout_with_error_event_and_partial_usage(world: World) -> None:
    model = world.backend()
    key, user_id, _ = world.new_key()
    status, raw, elapsed = _stream(world, key, chat(model, "[[stall_after:2]] [[tokens:10]]", stream=True))
    assert status == 200
    assert elapsed < READ_TIMEOUT + 4  # the fake stalls for 60 s; the gateway gives up after the read timeout
    events = _sse_events(raw)
    assert sum(1 for e in events if e.get("choices")) >= 2
    assert events[-1]["error"]["code"] == "stream_interrupted"
    assert "stopped sending" in events[-1]["error"]["message"]
    [row] = world.wait_rows(user_id, 1)
    assert (row["outcome"], row["error_type"], row["estimated"]) == ("upstream_timeout", "stream_stalled", True)
    assert row["tokens_out"] >= 1
    assert world.counters(user_id)["tokens"] == row["tokens_in"] + row["tokens_out"]


def test_negative_or_absurd_usage_is_discarded_estimated_and_flagged(world: World) -> None:
    model = world.backend()
    key, user_id, _ = world.new_key()
    status, body, _, _ = _post(world, key, chat(model, "[[usage:bogus]] [[tokens:5]]"))
    assert status == 200
    status, raw, _ = _stream(world, key, chat(model, "[[usage:bogus]] [[tokens:5]]", stream=True))
    assert status == 200 and raw.rstrip().endswith(b"data: [DONE]")
    rows = world.wait_rows(user_id, 2)
    assert len(rows) == 2
    for row in rows:
        assert row["estimated"] is True or row["estimated"] == 1
        assert 0 < row["tokens_in"] < 1000 and 0 < row["tokens_out"] < 1000
    counters = world.counters(user_id)
    assert counters["tokens"] == sum(r["tokens_in"] + r["tokens_out"] for r in rows) < 4000


def test_multi_megabyte_single_event_is_relayed_without_crash_and_usage_still_bounded(world: World) -> None:
    model = world.backend()
    key, user_id, _ = world.new_key()
    status, raw, _ = _stream(world, key, chat(model, "[[big_event:3000000]] [[tokens:3]]", stream=True), timeout=30)
    assert status == 200
    assert 3_000_000 < len(raw) < 3_200_000  # the event went through whole, once
    [row] = world.wait_rows(user_id, 1)
    assert row["status"] == 200 and row["outcome"] == "ok"
    assert row["tokens_out"] < 10_000_000
    # the worker survived and still serves
    status, body, _, _ = _post(world, key, chat(model))
    assert status == 200 and body["choices"]
