"""Time helpers: the database stores naive UTC everywhere, so both SQLite and
PostgreSQL compare timestamps the same way."""
from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def isoformat(value: datetime | None) -> str | None:
    """Render a stored naive-UTC timestamp as ISO 8601 with an explicit ``Z``."""
    if value is None:
        return None
    return value.isoformat(timespec="seconds") + "Z"


def parse_datetime(value: str) -> datetime:
    """Parse an ISO 8601 timestamp (``Z`` or offset allowed) into naive UTC."""
    text = value.strip()
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed
