"""Cache generations: a write that must be seen by every worker at once (a revoked
key, a suspended user, an edited backend) bumps a counter in the database; workers
compare it with the value their cache was built from."""
from __future__ import annotations

from sqlalchemy import select, update

from .extensions import db
from .models import GenerationCounter

AUTH = "auth"
ROUTING = "routing"


def bump(name: str) -> None:
    """Increment ``name`` inside the caller's transaction (committed with the change)."""
    result = db.session.execute(
        update(GenerationCounter).where(GenerationCounter.name == name).values(value=GenerationCounter.value + 1)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        db.session.add(GenerationCounter(name=name, value=1))


def current(name: str) -> int:
    return int(db.session.scalar(select(GenerationCounter.value).where(GenerationCounter.name == name)) or 0)
