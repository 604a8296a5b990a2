"""Quota periods. A period is identified by its start (naive UTC), so the usage row
for "now" can be found or created without any reset job, in a configurable timezone.

``monthly`` periods start on ``reset_day`` (1-28, so every month has it) at local
midnight; ``daily`` at local midnight; ``total`` never resets (start = epoch).
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

EPOCH = datetime(1970, 1, 1)


def _to_utc_naive(local: datetime) -> datetime:
    return local.astimezone(UTC).replace(tzinfo=None)


def period_bounds(period: str, reset_day: int, now_utc: datetime,
                  tz_name: str = "UTC") -> tuple[datetime, datetime | None]:
    """(start, end) of the period containing ``now_utc``, both naive UTC; end None for total."""
    if period == "total":
        return EPOCH, None
    tz = ZoneInfo(tz_name)
    local_now = now_utc.replace(tzinfo=UTC).astimezone(tz)
    if period == "daily":
        start = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=1)).replace(tzinfo=None).replace(tzinfo=tz)
        return _to_utc_naive(start), _to_utc_naive(end)
    if period != "monthly":
        raise ValueError(f"unknown quota period {period!r}")
    day = min(max(int(reset_day or 1), 1), 28)
    year, month = local_now.year, local_now.month
    if local_now.day < day:
        month -= 1
        if month == 0:
            year, month = year - 1, 12
    start = datetime(year, month, day, tzinfo=tz)
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    end = datetime(next_year, next_month, day, tzinfo=tz)
    return _to_utc_naive(start), _to_utc_naive(end)
