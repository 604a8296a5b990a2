"""What "the database is unavailable" means - one rule for every layer.

A database failure must take the documented path wherever it is raised: a clean 503
with ``Retry-After`` for the request that hit it, and a retry (never a lost row) for
the record step. Most of the code talks to the database through SQLAlchemy, which
wraps the driver's exceptions in its own classes; but a few paths see the driver's
exception itself (a pool checkout that opens a new connection outside a SQLAlchemy
``Connection``, as ``Engine.raw_connection`` does for the hot path's single
statements), and a pool that cannot hand out a connection in time raises its own
``TimeoutError``. ``UNAVAILABLE`` names them all, so ``except UNAVAILABLE`` means the
same thing in the error handler, the record step's retry loop, the reservation renewal
and the background jobs. See docs/architecture.md, Failure policies.
"""
from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy import exc as sa_exc

UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,  # connection refused or lost, statement timeout, SQLite busy
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,  # a checkout ping that failed and could not be replaced
    sa_exc.TimeoutError,  # the pool had no connection to give within pool_timeout
    psycopg.OperationalError,  # the driver's own, from a raw pool checkout
    psycopg.InterfaceError,
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
)


def is_unavailable(error: BaseException) -> bool:
    """True when ``error`` says the database could not be reached or answered in time."""
    return isinstance(error, UNAVAILABLE)

# Any database error at all, for loops that must outlive one (a background job, the
# reservation renewal): SQLAlchemy's own classes plus the driver errors above.
ANY_ERROR: tuple[type[Exception], ...] = (sa_exc.SQLAlchemyError, *UNAVAILABLE)
