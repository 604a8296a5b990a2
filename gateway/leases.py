"""Named, expiring database leases: how exactly one worker across the whole deployment
runs a periodic job (upstream probes, log retention) - a lock, not luck.

Atomic on SQLite and PostgreSQL: the conditional UPDATE only matches a lease that has
expired (or, when renewing, one this holder already has), and the INSERT of a missing
row loses to a concurrent one on the primary key.
"""
from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import insert, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .models import Lease
from .timeutil import utcnow


def holder_id() -> str:
    """A holder name unique to this process (host, pid and a random suffix)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire(engine: Engine, name: str, holder: str, seconds: float, now: datetime | None = None,
            renew: bool = True) -> bool:
    """True when ``holder`` holds ``name`` until now + ``seconds``. With ``renew`` the
    current holder extends its own lease; without, only an expired lease is taken."""
    now = now or utcnow()
    expires = now + timedelta(seconds=seconds)
    takeable = or_(Lease.holder == holder, Lease.expires_at <= now) if renew else Lease.expires_at <= now
    with engine.begin() as conn:
        taken = conn.execute(update(Lease).where(Lease.name == name, takeable)
                             .values(holder=holder, expires_at=expires)).rowcount
    if taken:
        return True
    try:
        with engine.begin() as conn:
            conn.execute(insert(Lease).values(name=name, holder=holder, expires_at=expires))
        return True
    except IntegrityError:
        return False  # someone holds it (or inserted it first)

