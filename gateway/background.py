"""Background jobs: one loop per job in every worker, and a database lease deciding
which worker of the whole deployment does the work - the upstream prober, the
stale-reservation sweep, the daily log retention.

Why this shape: every worker runs the same code and none is special, so a worker that
dies is covered by the others - its lease expires and the next round elsewhere takes
it (``gateway.leases``). A loop never dies of a failed round, and the next round
retries: a database error (a blip, a restart) is logged in one line by class, as the
outage it is; anything else is a bug and is logged with its traceback.
The loops are daemon threads, i.e. greenlets in a patched gunicorn worker, started
from ``post_worker_init`` (gunicorn.conf.py). See docs/architecture.md, Background jobs.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask

from . import leases
from .db_failures import ANY_ERROR
from .extensions import db

log = logging.getLogger("gateway.background")


def holds_lease(app: Flask, name: str, holder: str, seconds: float, renew: bool = True) -> bool:
    """Take (or, with ``renew``, extend) lease ``name`` for ``holder``; True when held."""
    with app.app_context():
        engine = db.engine
    return leases.acquire(engine, name, holder, seconds, renew=renew)


def periodic(interval: float) -> Callable[[float | None], float]:
    """Waits for a job every ``interval`` seconds: the first a random part of one interval
    (workers start together and should not collide), then the rest of the interval after
    each round's start, plus a little jitter."""

    def wait(last_started: float | None) -> float:
        if last_started is None:
            return random.uniform(0.2, 1.0) * interval
        return max(0.0, interval - (time.monotonic() - last_started)) + random.uniform(0, 0.05 * interval)

    return wait


def start_loop(app: Any, name: str, wait: Callable[[float | None], float],
               round_: Callable[[Flask], object]) -> threading.Thread | None:
    """Run ``round_(app)`` forever in a daemon thread named ``keygate-<name>``, sleeping
    ``wait(start of the last round, or None)`` seconds before each round. Returns None
    when ``app`` is not a Flask app (gunicorn serving something else)."""
    if not isinstance(app, Flask):
        return None

    def loop() -> None:
        last_started: float | None = None
        while True:
            time.sleep(wait(last_started))
            last_started = time.monotonic()
            try:
                round_(app)
            except ANY_ERROR as exc:
                log.error("background job %s: database error (%s); the next round retries", name, type(exc).__name__)
            except Exception:  # a bug: shown in full, and the loop still outlives it
                log.exception("background job %s: round failed; the next round retries", name)

    thread = threading.Thread(target=loop, name=f"keygate-{name}", daemon=True)
    thread.start()
    return thread
