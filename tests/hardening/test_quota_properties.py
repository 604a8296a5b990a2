"""Property test of the quota arithmetic against the real database: interleaved
reserve / settle / sweep operations never push usage past the quota by more than the
documented bound, and every reservation is released exactly once.

The bound (gateway/proxy/quota.py, sweep.py): a request that settles while holding its
reservation can overrun it by max(0, actual - reserved); a request whose reservation
the sweep released first is no longer held, so all of its actual usage may overrun.
The parser's own properties (chunking, arbitrary bytes) live in
tests/proxy/test_usage_parser.py.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from gateway import create_app
from gateway.errors import ApiError
from tests.conftest import make_env

from .conftest import World

QUOTA = 1000
operations = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 300), st.one_of(st.none(), st.integers(1, 400))),
    st.tuples(st.just("settle"), st.integers(0, 50), st.integers(0, 700)),
    st.tuples(st.just("sweep"), st.just(0), st.just(0)),
), min_size=1, max_size=40)


@pytest.fixture(scope="module")
def quota_app(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    app = create_app(env=make_env(world.database_url, tmp_path_factory.mktemp("quota") / "instance",
                                  DEFAULT_MAX_TOKENS_RESERVE="200"))
    with app.app_context():
        yield app
        from gateway.extensions import db

        db.session.remove()
        db.engine.dispose()


def _caller(user_id: int) -> Any:
    from gateway.proxy.authenticate import Caller

    return Caller(key_id=0, key_prefix="sk-pro-", user_id=user_id, user_name="p", tier="pro", rpm=1000, rpd=None,
                  tpm=None, token_quota=QUOTA, request_quota=None, byte_quota=None, quota_period="total",
                  reset_day=1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_reserve_settle_sweep_never_exceed_quota_beyond_the_documented_bound(world: World, quota_app: Flask,
                                                                              ops: list[tuple]) -> None:
    from gateway.extensions import db
    from gateway.models import Reservation, UsageCounter
    from gateway.proxy import quota
    from gateway.timeutil import utcnow

    _, user_id, _ = world.new_key()
    caller = _caller(user_id)
    open_holds: list[quota.Held] = []
    swept: set[str] = set()
    bound = 0
    for op, a, b in ops:
        if op == "reserve":
            try:
                open_holds.append(quota.reserve(caller, uuid.uuid4().hex, a, b, 0))
            except ApiError as error:
                assert error.status == 402
        elif op == "settle" and open_holds:
            held = open_holds.pop(a % len(open_holds))
            with db.engine.begin() as conn:
                quota.settle(conn, held, b // 2, b - b // 2, 0)
            bound += b if held.request_id in swept else max(0, b - held.tokens)
        elif op == "sweep":
            ids = {h.request_id for h in open_holds}
            quota.release_stale(0, now=utcnow().replace(year=2100))
            swept |= ids
        with db.engine.connect() as conn:
            row = conn.execute(select(UsageCounter).where(UsageCounter.user_id == user_id)).first()
        if row is not None:
            used = row.tokens_in + row.tokens_out
            live = sum(h.tokens for h in open_holds if h.request_id not in swept)
            assert row.reserved_tokens == live
            assert used <= QUOTA + bound
            assert used + row.reserved_tokens <= QUOTA + bound
    for held in open_holds:
        with db.engine.begin() as conn:
            quota.settle(conn, held, 0, 0, 0)
    with db.engine.connect() as conn:
        row = conn.execute(select(UsageCounter).where(UsageCounter.user_id == user_id)).first()
        left = conn.execute(select(Reservation).where(Reservation.counter_id == (row.id if row else -1))).all()
    if row is not None:
        assert (row.reserved_tokens, row.reserved_requests, row.reserved_bytes) == (0, 0, 0)
    assert left == []
