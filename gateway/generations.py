"""Cache generations: a write that must be seen by every worker at once (a revoked
key, a suspended user, an edited backend, a pool health transition) bumps a counter in
the same transaction as the change; workers compare it with the value their cache
(``gateway.proxy.snapshot``) was built from at most every CACHE_REFRESH_SECONDS, and
the worker that made the change on its next request (``local_bumps``)."""
from __future__ import annotations

from sqlalchemy import insert, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .extensions import db
from .models import GenerationCounter

AUTH = "auth"
ROUTING = "routing"

# Bumps made by this process: the snapshot re-reads the counters as soon as this moves,
# so the worker that revoked a key (or saw an upstream key fail) never serves from its
# stale copy, whatever the refresh interval.
local_bumps = 0


def bump(name: str, conn: Connection | None = None) -> None:
    """Increment ``name`` inside the caller's transaction: ``conn`` for Core callers,
    else the ORM session's (committed with the change either way)."""
    global local_bumps
    local_bumps += 1
    conn = conn if conn is not None else db.session.connection()
    counter = GenerationCounter
    increment = update(counter).where(counter.name == name).values(value=counter.value + 1)
    if conn.execute(increment).rowcount:
        return
    try:
        with conn.begin_nested():  # first bump ever: the primary key settles a race
            conn.execute(insert(counter).values(name=name, value=1))
    except IntegrityError:
        conn.execute(increment)
