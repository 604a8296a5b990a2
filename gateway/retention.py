"""Request-log retention: rows older than ``LOG_RETENTION_DAYS`` are deleted in batches,
daily at ``RETENTION_HOUR_UTC`` by one worker across the deployment, and on demand
with ``flask prune-logs``.

Guarantees and why:
- Only ``request_logs`` rows (and ``stored_responses`` rows of the same age: which
  upstream key holds an old Responses API object) are deleted; usage counters, key and
  upstream-key totals are separate rows and stay exact, because quotas and reports
  depend on them.
- Each batch (``BATCH_SIZE`` rows) is its own short transaction, so a prune of millions
  of rows never holds a long lock that would stall request recording (SQLite has one
  writer; PostgreSQL would bloat one huge transaction).
- Two prunes at once do no harm: each batch deletes "old ids that still exist", so a row
  deleted by the other run is simply not counted twice.
- The daily run is decided by a ``Lease`` row taken with a conditional UPDATE (or the
  first INSERT); its row count says who won, so exactly one worker of all hosts prunes.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from . import background, leases
from .models import RequestLog, StoredResponse
from .observability import metrics
from .timeutil import utcnow

log = logging.getLogger("gateway.retention")
BATCH_SIZE = 5000
LEASE_NAME = "log-retention"
# Longer than any prune, shorter than a day: tomorrow's run finds it expired.
LEASE_SECONDS = 20 * 3600


def prune_request_logs(engine: Engine, days: int, batch_size: int = BATCH_SIZE,
                       now: datetime | None = None) -> int:
    """Delete request-log rows older than ``days``; returns how many this call deleted."""
    cutoff = (now or utcnow()) - timedelta(days=days)
    total = _prune(engine, RequestLog, cutoff, batch_size)
    # Stored-response pointers age out with the logs (the provider keeps the objects
    # themselves for far less); not counted in the request-log total.
    _prune(engine, StoredResponse, cutoff, batch_size)
    log.info("Cleaned up %d old request logs", total,
             extra={"fields": {"event": "retention", "deleted": total, "older_than_days": days}})
    return total


def _prune(engine: Engine, model: type[RequestLog] | type[StoredResponse], cutoff: datetime,
           batch_size: int) -> int:
    """Delete ``model`` rows created before ``cutoff``, one short transaction per batch."""
    total = 0
    while True:
        oldest = (select(model.id).where(model.created_at < cutoff)
                  .order_by(model.id).limit(batch_size).scalar_subquery())
        with engine.begin() as conn:
            deleted = conn.execute(delete(model).where(model.id.in_(oldest))).rowcount or 0
        total += deleted
        if deleted == 0:
            return total
        if model is RequestLog:
            metrics.RETENTION_DELETED.inc(deleted)
        time.sleep(0)  # under gevent: let requests run between batches


def take_lease(engine: Engine, name: str, holder: str, seconds: float, now: datetime | None = None) -> bool:
    """True if ``holder`` now holds lease ``name`` for ``seconds``; an unexpired lease is
    never renewed, so one daily run per lease period (see ``gateway.leases``)."""
    return leases.acquire(engine, name, holder, seconds, now=now, renew=False)


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


def run_scheduled(app: Flask, holder: str | None = None) -> int | None:
    """The daily job: prune if this worker wins today's lease; None when another one did."""
    with app.app_context():
        from .extensions import db

        engine = db.engine
        if not take_lease(engine, LEASE_NAME, holder or holder_name(), LEASE_SECONDS):
            return None
        return prune_request_logs(engine, app.config["LOG_RETENTION_DAYS"])


def seconds_until(hour: int, now: datetime) -> float:
    """Seconds from ``now`` (naive UTC) to the next ``hour``:00 UTC."""
    target = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    return (target - now).total_seconds()


def start_scheduler(app: Any) -> threading.Thread | None:
    """Start the daily retention loop in this worker (a greenlet under gevent). Called from
    gunicorn's ``post_worker_init``; the lease, not the number of workers, decides who prunes."""
    if not isinstance(app, Flask):
        return None
    hour = app.config["RETENTION_HOUR_UTC"]

    def wait(last_started: float | None) -> float:
        # Past the hour boundary before computing the next one (60 s after a run), and a
        # little jitter so every worker does not hit the lease row in the same millisecond.
        pause = 0.0 if last_started is None else 60.0
        return pause + seconds_until(hour, utcnow() + timedelta(seconds=pause)) + random.uniform(0, 30)

    return background.start_loop(app, "retention", wait, run_scheduled)


@click.command("prune-logs")
@click.option("--days", type=int, default=None, help="keep this many days (default: LOG_RETENTION_DAYS)")
@click.option("--batch-size", type=int, default=BATCH_SIZE, show_default=True)
@with_appcontext
def prune_logs_command(days: int | None, batch_size: int) -> None:
    """Delete request logs older than the retention period now (usage totals are kept)."""
    from .extensions import db

    days = days if days is not None else current_app.config["LOG_RETENTION_DAYS"]
    if days < 1 or batch_size < 1:
        raise click.BadParameter("--days and --batch-size must be at least 1")
    deleted = prune_request_logs(db.engine, days, batch_size)
    click.echo(f"Cleaned up {deleted} old request logs")
