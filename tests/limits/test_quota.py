"""Quota reserve/settle, periods and stale reservations with the in-process app, time
passed explicitly (``now``) so period boundaries are crossed without sleeping."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from gateway.errors import ApiError
from gateway.extensions import db
from gateway.models import Reservation, UsageCounter
from gateway.proxy import quota, sweep
from gateway.proxy.authenticate import Caller
from gateway.services import users as user_service
from gateway.timeutil import utcnow
from gateway.transaction import committed


def make_caller(app: Any, **quotas: Any) -> Caller:
    with app.app_context():
        with committed():
            user = user_service.create({"name": "quota-user", "tier": "pro", **quotas}, "test", None)
        return Caller(key_id=1, key_prefix="sk-pro-", user_id=user.id, user_name=user.name, tier="pro", rpm=120,
                      rpd=None, tpm=None, token_quota=user.token_quota, request_quota=user.request_quota,
                      byte_quota=user.byte_quota, quota_period=user.quota_period, reset_day=user.reset_day)


def reserve(app: Any, caller: Caller, now: datetime, prompt: int = 10, max_tokens: int | None = 30,
            nbytes: int = 100) -> quota.Held:
    with app.test_request_context():
        return quota.reserve(caller, uuid.uuid4().hex, prompt, max_tokens, nbytes, now=now)


def refused(app: Any, caller: Caller, now: datetime, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        reserve(app, caller, now, **kwargs)
    assert caught.value.status == 402
    return caught.value


def settle(app: Any, held: quota.Held, tokens_in: int, tokens_out: int, nbytes: int = 100) -> None:
    with app.app_context(), db.engine.begin() as conn:
        quota.settle(conn, held, tokens_in, tokens_out, nbytes)


def counters(app: Any, user_id: int) -> list[tuple[datetime, int, int, int, int]]:
    with app.app_context():
        rows = db.session.execute(select(UsageCounter).where(UsageCounter.user_id == user_id)
                                  .order_by(UsageCounter.period_start)).scalars()
        return [(r.period_start, r.tokens_in + r.tokens_out, r.reserved_tokens, r.requests, r.reserved_requests)
                for r in rows]


MARCH_20 = datetime(2026, 3, 20, 12, 0)


def test_reservations_admit_until_the_quota_and_402_says_quota_used_and_reset(app):
    caller = make_caller(app, token_quota=100, quota_period="monthly", reset_day=15)
    first = reserve(app, caller, MARCH_20)
    reserve(app, caller, MARCH_20)
    settle(app, first, 10, 5)
    error = refused(app, caller, MARCH_20, prompt=10, max_tokens=60)  # 15 used + 40 held + 70 > 100
    assert error.extra["quota"] == {"token_quota": 100, "request_quota": None, "byte_quota": None,
                                    "tokens_used": 15, "requests_used": 1, "bytes_used": 100,
                                    "in_flight_tokens": 40, "resets_at": "2026-04-15T00:00:00Z"}
    assert "Quota exhausted (tokens): 15 of 100 tokens" in error.message
    assert "resets at 2026-04-15T00:00:00Z" in error.message
    assert counters(app, caller.user_id) == [(datetime(2026, 3, 15), 15, 40, 1, 1)]


def test_settle_releases_the_reservation_and_adds_the_actual_usage_once(app):
    caller = make_caller(app, token_quota=100, quota_period="total")
    held = reserve(app, caller, MARCH_20, prompt=10, max_tokens=80)
    refused(app, caller, MARCH_20, prompt=10, max_tokens=5)
    settle(app, held, 10, 20)
    settle(app, held, 10, 20)  # a retried record step must not release twice
    assert counters(app, caller.user_id)[0][1:] == (60, 0, 2, 0)
    reserve(app, caller, MARCH_20, prompt=10, max_tokens=30)  # 60 + 40 fits exactly


def test_request_quota_is_exact(app):
    caller = make_caller(app, request_quota=2, quota_period="daily")
    reserve(app, caller, MARCH_20)
    reserve(app, caller, MARCH_20)
    error = refused(app, caller, MARCH_20)
    assert "Quota exhausted (requests)" in error.message
    assert error.extra["quota"]["resets_at"] == "2026-03-21T00:00:00Z"


def test_byte_quota_counts_request_bodies(app):
    caller = make_caller(app, byte_quota=250, quota_period="total")
    reserve(app, caller, MARCH_20, nbytes=200)
    error = refused(app, caller, MARCH_20, nbytes=51)
    assert "Quota exhausted (bytes)" in error.message and "it does not reset" in error.message
    reserve(app, caller, MARCH_20, nbytes=50)


def test_monthly_quota_rolls_over_at_midnight_of_the_reset_day(app):
    caller = make_caller(app, token_quota=50, quota_period="monthly", reset_day=15)
    settle(app, reserve(app, caller, MARCH_20, prompt=10, max_tokens=40), 10, 40)
    refused(app, caller, datetime(2026, 4, 14, 23, 59, 59))
    held = reserve(app, caller, datetime(2026, 4, 15, 0, 0, 0))
    settle(app, held, 3, 4)
    assert counters(app, caller.user_id) == [(datetime(2026, 3, 15), 50, 0, 1, 0),
                                              (datetime(2026, 4, 15), 7, 0, 1, 0)]


def test_daily_periods_start_at_midnight_in_the_quota_timezone(app):
    app.config["QUOTA_TIMEZONE"] = "America/New_York"  # UTC-5 in January
    caller = make_caller(app, request_quota=1, quota_period="daily")
    settle(app, reserve(app, caller, datetime(2026, 1, 10, 4, 0)), 1, 1)
    error = refused(app, caller, datetime(2026, 1, 10, 4, 59, 59))
    assert error.extra["quota"]["resets_at"] == "2026-01-10T05:00:00Z"
    reserve(app, caller, datetime(2026, 1, 10, 5, 0))
    assert [row[0] for row in counters(app, caller.user_id)] == [datetime(2026, 1, 9, 5), datetime(2026, 1, 10, 5)]


def test_stale_reservations_are_released_exactly_once(app):
    caller = make_caller(app, token_quota=100, quota_period="total")
    held = reserve(app, caller, MARCH_20, prompt=10, max_tokens=50)
    with app.app_context():
        assert quota.release_stale(900, now=MARCH_20 + timedelta(minutes=14)) == 0
        assert quota.release_stale(900, now=MARCH_20 + timedelta(minutes=16)) == 1
        assert quota.release_stale(900, now=MARCH_20 + timedelta(minutes=17)) == 0
    assert counters(app, caller.user_id)[0][1:] == (0, 0, 0, 0)
    settle(app, held, 10, 30)  # the request finished after all: usage counted, nothing released twice
    assert counters(app, caller.user_id)[0][1:] == (40, 0, 1, 0)


def test_reserve_never_releases_stale_reservations_itself(app):
    caller = make_caller(app, token_quota=100, quota_period="total")
    reserve(app, caller, MARCH_20, prompt=10, max_tokens=80)  # its worker "dies"
    later = MARCH_20 + timedelta(seconds=app.config["RESERVATION_TTL_SECONDS"] + 1)
    refused(app, caller, later, prompt=10, max_tokens=80)  # stale, but a request does not sweep
    with app.app_context():
        assert db.session.scalars(select(Reservation.tokens)).all() == [90]


def test_the_sweep_round_releases_what_is_stale_and_lets_the_quota_be_used_again(app):
    caller = make_caller(app, token_quota=100, quota_period="total")
    reserve(app, caller, MARCH_20, prompt=10, max_tokens=80)  # its worker "dies"
    later = MARCH_20 + timedelta(seconds=app.config["RESERVATION_TTL_SECONDS"] + 1)
    reserve(app, caller, later - timedelta(seconds=2), prompt=10, max_tokens=0)  # live, not stale at `later`
    assert sweep.run_round(app, now=later) == 1
    assert sweep.run_round(app, now=later) == 0  # released exactly once
    reserve(app, caller, later, prompt=10, max_tokens=70)  # fits only because the dead one was released
    with app.app_context():
        assert sorted(db.session.scalars(select(Reservation.tokens)).all()) == [10, 80]


def test_release_reservations_cli_releases_only_stale_ones(app):
    caller = make_caller(app, token_quota=1000, quota_period="total")
    now = utcnow()
    reserve(app, caller, now - timedelta(minutes=1))
    reserve(app, caller, now - timedelta(minutes=20))
    reserve(app, caller, now - timedelta(minutes=20))
    result = app.test_cli_runner().invoke(args=["release-reservations"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "released 2 stale reservation(s) older than 900s"
    assert counters(app, caller.user_id)[0][2:] == (40, 0, 1)
    result = app.test_cli_runner().invoke(args=["release-reservations", "--older-than", "30"])
    assert result.output.strip() == "released 1 stale reservation(s) older than 30s"
    assert counters(app, caller.user_id)[0][2:] == (0, 0, 0)
