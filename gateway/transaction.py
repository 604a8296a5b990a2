"""The unit of work: one user action (an admin API call, a portal form, a CLI command,
the demo's provisioning) is exactly one database transaction.

Services in ``gateway.services`` only ``flush()`` (to get ids, or to let the database
check a constraint); the caller wraps the whole action in ``committed()``. So "create a
user and its first key" is one transaction wherever it is called from, and a cache
generation bump is committed together with the change it announces, never alone
(see docs/architecture.md, Transactions).

The commit happens when the ``with`` block ends, before the caller builds its response,
so a failed commit surfaces as an error instead of a success page for a change that
was never stored.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .extensions import db


@contextmanager
def committed() -> Iterator[None]:
    """Commit the session when the block succeeds; on any exception roll back and
    re-raise, so a half-done action (a user without its key) never persists and the
    session is usable again for rendering the error."""
    try:
        yield
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
