"""Retention: only request-log rows older than the retention period go, in batches;
usage totals stay; two runs at once delete each row once; the daily lease lets exactly
one worker run."""
from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import func, insert, select

from gateway.extensions import db
from gateway.models import ApiKey, RequestLog, UsageCounter
from gateway.retention import LEASE_NAME, prune_request_logs, run_scheduled, seconds_until, take_lease
from gateway.timeutil import utcnow


def _seed(app, admin_headers, client, old: int, recent: int) -> int:
    created = client.post("/api/admin/keys", json={"name": "retained", "tier": "dev", "total_tokens": 1000},
                          headers=admin_headers).get_json()
    now = utcnow()
    with app.app_context():
        rows = [{"request_id": f"old-{i}", "created_at": now - timedelta(days=91, minutes=i), "route": "/v1/x",
                 "status": 200, "user_id": created["user_id"]} for i in range(old)]
        rows += [{"request_id": f"new-{i}", "created_at": now - timedelta(days=89), "route": "/v1/x",
                  "status": 200, "user_id": created["user_id"]} for i in range(recent)]
        db.session.execute(insert(RequestLog), rows)
        db.session.execute(insert(UsageCounter).values(user_id=created["user_id"], period_start=now.date(),
                                                       tokens_in=11, tokens_out=22, requests=old + recent))
        db.session.commit()
    return created["id"]


def _counts(app):
    with app.app_context():
        remaining = db.session.scalars(select(RequestLog.request_id)).all()
        usage = db.session.execute(select(UsageCounter.tokens_in, UsageCounter.tokens_out,
                                          UsageCounter.requests)).all()
        keys = db.session.scalar(select(func.count()).select_from(ApiKey))
    return remaining, usage, keys


def test_prune_deletes_only_rows_older_than_the_retention_period(app, client, admin_headers):
    _seed(app, admin_headers, client, old=12, recent=5)
    with app.app_context():
        deleted = prune_request_logs(db.engine, 90, batch_size=5)

    remaining, usage, keys = _counts(app)
    assert deleted == 12
    assert sorted(remaining) == sorted(f"new-{i}" for i in range(5))
    assert [tuple(row) for row in usage] == [(11, 22, 17)] and keys == 1


def test_two_prunes_at_once_delete_every_old_row_exactly_once(app, client, admin_headers):
    _seed(app, admin_headers, client, old=300, recent=7)
    with app.app_context():
        engine = db.engine
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(prune_request_logs(engine, 90, batch_size=7))
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    remaining, usage, _ = _counts(app)
    assert errors == []
    assert sum(results) == 300
    assert len(remaining) == 7 and all(r.startswith("new-") for r in remaining)
    assert [tuple(row) for row in usage] == [(11, 22, 307)]


def test_the_daily_run_happens_on_exactly_one_of_several_workers(app, client, admin_headers):
    _seed(app, admin_headers, client, old=4, recent=1)
    results: list[int | None] = []
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        barrier.wait()
        results.append(run_scheduled(app, holder=f"host:{n}"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(results, key=lambda r: r is None) == [4, None, None, None]
    with app.app_context():  # tomorrow the lease has expired and someone runs again
        assert take_lease(db.engine, LEASE_NAME, "host:9", 60) is False
        assert take_lease(db.engine, LEASE_NAME, "host:9", 60, now=utcnow() + timedelta(hours=21)) is True


def test_flask_prune_logs_reports_what_it_cleaned_up(app, client, admin_headers):
    _seed(app, admin_headers, client, old=3, recent=2)

    result = app.test_cli_runner().invoke(args=["prune-logs"])

    assert result.exit_code == 0, result.output
    assert "Cleaned up 3 old request logs" in result.output
    assert len(_counts(app)[0]) == 2


def test_the_next_run_is_at_the_configured_hour_utc():
    now = utcnow().replace(hour=2, minute=30, second=0, microsecond=0)
    assert seconds_until(3, now) == 1800
    assert seconds_until(2, now) == 23.5 * 3600
