"""Releasing stale quota reservations.

A request reserves its worst case before it is forwarded and settles after the
response. If its worker dies in between (killed, OOM, host lost) the reservation
would hold quota forever, so reservations older than RESERVATION_TTL_SECONDS are
released: every SWEEP_INTERVAL_SECONDS by one worker of the deployment (a leased
background loop, like the prober's; ``start_background``), and on demand by
``flask release-reservations``. The sweep is never a user request's business: a
request only reserves and settles, so its latency does not carry anyone's clean-up.

A live request renews its row while it relays (``quota.Renewal``, every
RESERVATION_RENEW_SECONDS, default TTL/3), so the TTL must exceed the longest time a
request goes without relaying a chunk, not its length: releasing a live request's
reservation is safe for accounting (settle still adds the actual usage, exactly once)
but lets others reserve that amount.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime

import click
from flask import Flask, current_app

from .. import background, leases
from . import quota

log = logging.getLogger("gateway.quota")
LEASE_NAME = "reservation-sweep"


def release_all_stale(older_than_seconds: int, now: datetime | None = None) -> int:
    """Release every reservation older than ``older_than_seconds``, batch by batch (each
    batch its own short transaction); returns how many. Needs an app context."""
    total = 0
    while True:
        released = quota.release_stale(older_than_seconds, now)
        total += released
        if released < quota.SWEEP_BATCH:
            return total


def run_round(app: Flask, now: datetime | None = None) -> int:
    """One sweep: release what is stale now, log it when there was anything."""
    with app.app_context():
        ttl = app.config["RESERVATION_TTL_SECONDS"]
        released = release_all_stale(ttl, now)
    if released:
        log.warning("released %d stale quota reservation(s) older than %ss", released, ttl)
    return released


def start_background(app: object) -> threading.Thread | None:
    """Start this worker's sweep loop; the lease decides which worker sweeps. None when
    SWEEP_INTERVAL_SECONDS is 0 (sweeping by hand only)."""
    if not isinstance(app, Flask):
        return None
    interval = float(app.config["SWEEP_INTERVAL_SECONDS"])
    if interval <= 0:
        return None
    holder = leases.holder_id()

    def round_(app: Flask) -> None:
        if background.holds_lease(app, LEASE_NAME, holder, interval * 2):
            run_round(app)

    return background.start_loop(app, "sweep", background.periodic(interval), round_)


def register_cli(app: Flask) -> None:
    @app.cli.command("release-reservations")
    @click.option("--older-than", type=int, default=None,
                  help="seconds (default: RESERVATION_TTL_SECONDS)")
    def release_reservations(older_than: int | None) -> None:
        """Release quota reservations of requests that never finished (dead workers)."""
        seconds = current_app.config["RESERVATION_TTL_SECONDS"] if older_than is None else older_than
        total = release_all_stale(seconds)
        click.echo(f"released {total} stale reservation(s) older than {seconds}s")
