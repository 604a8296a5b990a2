"""Releasing stale quota reservations.

A request reserves its worst case before it is forwarded and settles after the
response. If its worker dies in between (killed, OOM, host lost) the reservation
would hold quota forever, so reservations older than RESERVATION_TTL_SECONDS are
released: automatically, by ``maybe_release_stale`` which ``quota.reserve`` calls
(at most once a minute per worker, so the request path pays one indexed query a
minute), and on demand by ``flask release-reservations``.

The TTL must exceed the longest request a deployment allows (upstream read timeout
plus stream length): releasing a live request's reservation is safe for accounting
(settle still adds the actual usage, exactly once) but lets others reserve that amount.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

import click
from flask import Flask, current_app

from . import quota

log = logging.getLogger("gateway.quota")
SWEEP_INTERVAL = timedelta(seconds=60)
_last_sweep: datetime | None = None


def maybe_release_stale(now: datetime) -> int:
    """Release stale reservations unless this worker looked less than a minute ago
    (by the same clock the quota uses, so a test moving time moves this too)."""
    global _last_sweep
    if _last_sweep is not None and timedelta(0) <= now - _last_sweep < SWEEP_INTERVAL:
        return 0
    _last_sweep = now  # set first: other requests in this worker skip it meanwhile
    released = quota.release_stale(current_app.config["RESERVATION_TTL_SECONDS"], now)
    if released:
        log.warning("released %d stale quota reservation(s) older than %ss", released,
                    current_app.config["RESERVATION_TTL_SECONDS"])
    return released


def register_cli(app: Flask) -> None:
    @app.cli.command("release-reservations")
    @click.option("--older-than", type=int, default=None,
                  help="seconds (default: RESERVATION_TTL_SECONDS)")
    def release_reservations(older_than: int | None) -> None:
        """Release quota reservations of requests that never finished (dead workers)."""
        seconds = current_app.config["RESERVATION_TTL_SECONDS"] if older_than is None else older_than
        total = 0
        while True:  # release_stale works in batches
            released = quota.release_stale(seconds)
            total += released
            if released < quota.SWEEP_BATCH:
                break
        click.echo(f"released {total} stale reservation(s) older than {seconds}s")
