"""Cache generations: a write that must be seen by every worker at once (a revoked
key, a suspended user, an edited backend, a pool health transition) bumps a counter in
the same transaction as the change; workers compare it with the value their cache
(``gateway.proxy.snapshot``) was built from, on every request."""
from __future__ import annotations

from sqlalchemy import insert, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .extensions import db
from .models import GenerationCounter

AUTH = "auth"
ROUTING = "routing"


def bump(name: str, conn: Connection | None = None) -> None:
    """Increment ``name`` inside the caller's transaction: ``conn`` for Core callers,
    else the ORM session's (committed with the change either way)."""
    conn = conn if conn is not None else db.session.connection()
    counter = GenerationCounter
    if conn.execute(update(counter).where(counter.name == name).values(value=counter.value + 1)).rowcount:
        return
    try:
        with conn.begin_nested():  # first bump ever: the primary key settles a race
            conn.execute(insert(counter).values(name=name, value=1))
    except IntegrityError:
        conn.execute(update(counter).where(counter.name == name).values(value=counter.value + 1))
