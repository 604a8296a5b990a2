"""The record step writes a request's usage exactly once, even when the connection
dies between the commit and its acknowledgement (fault injected around the real write)."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from gateway.extensions import db
from gateway.models import RequestLog, Reservation, UsageCounter
from gateway.proxy import accounting, quota
from gateway.proxy.authenticate import Caller
from gateway.services import keys as key_service
from gateway.services import users as user_service
from gateway.transaction import committed
from gateway.worker_state import state_of


def _caller(app):  # type: ignore[no-untyped-def]
    with committed():
        user = user_service.create({"name": "exactly-once", "token_quota": 10_000, "quota_period": "total"}, "t", None)
        key, _plaintext = key_service.issue(user, {}, "t", None)
    return Caller(key_id=key.id, key_prefix=key.prefix, user_id=user.id, user_name=user.name, tier="dev", rpm=30,
                  rpd=None, tpm=None, token_quota=10_000, request_quota=None, byte_quota=None, quota_period="total",
                  reset_day=1)


def _fail_first_write(monkeypatch, error: OperationalError, after_commit: bool) -> list[int]:  # type: ignore[no-untyped-def]
    """Wrap the real ``accounting._write`` so its first call fails with ``error``, after the
    write committed (a lost acknowledgement) or before it; returns the list of calls.
    Only the fault is injected: the database and the write itself are real."""
    real_write = accounting._write
    calls: list[int] = []

    def faulty(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1 and not after_commit:
            raise error
        real_write(*args, **kwargs)
        if len(calls) == 1:
            raise error

    monkeypatch.setattr(accounting, "_write", faulty)
    monkeypatch.setattr(accounting, "RETRY_DELAYS", (0.01, 0.01))
    return calls


def test_a_commit_whose_acknowledgement_was_lost_is_not_written_twice(app, monkeypatch):
    with app.app_context():
        caller = _caller(app)
        held = quota.reserve(caller, "req-lost-ack", prompt_tokens=10, max_tokens=20, body_bytes=100)
        calls = _fail_first_write(monkeypatch, OperationalError(
            "COMMIT", {}, Exception("server closed the connection unexpectedly")), after_commit=True)
        out = accounting.RequestOutcome(request_id="req-lost-ack", route="/v1/chat/completions", client_ip="127.0.0.1",
                             user_id=caller.user_id, key_id=caller.key_id, model="gpt-4o", status=200,
                             tokens_in=12, tokens_out=18, bytes_in=100, bytes_out=300)
        accounting.record_usage(state_of(app), db.engine, out, held)
        assert len(calls) == 1  # the retry saw the committed write and did not repeat it
        assert db.session.scalar(select(func.count()).select_from(RequestLog)) == 1
        assert db.session.scalar(select(func.count()).select_from(Reservation)) == 0
        counter = db.session.scalars(select(UsageCounter)).one()
        assert (counter.tokens_in, counter.tokens_out, counter.requests, counter.reserved_tokens) == (12, 18, 1, 0)


def test_a_write_that_failed_before_committing_is_retried_and_lands_once(app, monkeypatch):
    with app.app_context():
        caller = _caller(app)
        held = quota.reserve(caller, "req-retried", prompt_tokens=10, max_tokens=20, body_bytes=100)
        calls = _fail_first_write(monkeypatch, OperationalError("INSERT", {}, Exception("database is locked")),
                                  after_commit=False)
        out = accounting.RequestOutcome(request_id="req-retried", route="/v1/chat/completions", client_ip="127.0.0.1",
                             user_id=caller.user_id, key_id=caller.key_id, model="gpt-4o", status=200,
                             tokens_in=5, tokens_out=7)
        accounting.record_usage(state_of(app), db.engine, out, held)
        assert len(calls) == 2
        counter = db.session.scalars(select(UsageCounter)).one()
        assert (counter.tokens_in, counter.tokens_out, counter.requests, counter.reserved_tokens) == (5, 7, 1, 0)
        assert db.session.scalar(select(func.count()).select_from(RequestLog)) == 1
