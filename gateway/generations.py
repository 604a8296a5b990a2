"""Cache generations: a write that must be seen by every worker at once (a revoked
key, a suspended user, an edited backend, a pool health transition) bumps a counter in
the same transaction as the change; workers compare it with the value their snapshot
(``gateway.proxy.snapshot``) was built from at most every CACHE_REFRESH_SECONDS, and
the worker that made the change on its next request (``Snapshot.local_bumps``). See
docs/architecture.md, How changes reach other workers."""
from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import insert, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .extensions import db
from .models import GenerationCounter

if TYPE_CHECKING:
    from .worker_state import WorkerState

AUTH = "auth"
ROUTING = "routing"


def bump(name: str, conn: Connection | None = None, state: WorkerState | None = None) -> None:
    """Increment ``name`` inside the caller's transaction: ``conn`` for Core callers,
    else the ORM session's (committed with the change either way). ``state`` is the
    worker whose snapshot must re-read at once; code outside an app context (the relay
    generator's accounting) passes it, everything else gets the current app's."""
    if state is None:
        from .worker_state import worker_state

        state = worker_state()
    state.snapshot.note_local_bump()
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
