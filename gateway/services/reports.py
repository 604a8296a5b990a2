"""Read-only aggregations over RequestLog, UsageCounter and UpstreamKey for the portal
dashboard and the public usage page. Queries group in the database (``date()`` exists
on SQLite and PostgreSQL alike) so a busy month costs one query, not one per row."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from ..extensions import db
from ..models import HEALTH_STATES, RequestLog, UpstreamKey, User
from ..timeutil import utcnow


def day_start(now: datetime | None = None) -> datetime:
    """Midnight UTC of ``now``'s day (the dashboard counts days in UTC)."""
    now = now or utcnow()
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _totals_columns():  # type: ignore[no-untyped-def]
    return (
        func.count(RequestLog.id),
        func.coalesce(func.sum(RequestLog.tokens_in), 0),
        func.coalesce(func.sum(RequestLog.tokens_out), 0),
        func.coalesce(func.sum(case((RequestLog.status >= 400, 1), else_=0)), 0),
        func.sum(RequestLog.cost),
    )


def _totals(row: Any) -> dict[str, Any]:
    count, tin, tout, errors, cost = row
    return {"requests": int(count), "tokens_in": int(tin), "tokens_out": int(tout),
            "errors": int(errors), "cost": round(float(cost), 4) if cost is not None else None}


def totals(since: datetime, user_id: int | None = None) -> dict[str, Any]:
    """Requests, tokens in/out, errors (status >= 400) and cost (None when no price is known)."""
    query = select(*_totals_columns()).where(RequestLog.created_at >= since)
    if user_id is not None:
        query = query.where(RequestLog.user_id == user_id)
    return _totals(db.session.execute(query).one())


def windows(now: datetime | None = None) -> dict[str, dict[str, Any]]:
    today = day_start(now)
    return {"today": totals(today), "7 days": totals(today - timedelta(days=6)),
            "30 days": totals(today - timedelta(days=29))}


def daily(days: int, user_id: int | None = None, now: datetime | None = None) -> list[dict[str, Any]]:
    """One entry per UTC day (oldest first, zero-filled), so a chart has no gaps."""
    first = day_start(now) - timedelta(days=days - 1)
    day = func.date(RequestLog.created_at)
    query = select(day, *_totals_columns()).where(RequestLog.created_at >= first).group_by(day)
    if user_id is not None:
        query = query.where(RequestLog.user_id == user_id)
    found = {str(row[0])[:10]: _totals(row[1:]) for row in db.session.execute(query).all()}
    out = []
    for offset in range(days):
        key = (first + timedelta(days=offset)).date().isoformat()
        entry = found.get(key) or {"requests": 0, "tokens_in": 0, "tokens_out": 0, "errors": 0, "cost": None}
        out.append({"date": key, **entry, "tokens": entry["tokens_in"] + entry["tokens_out"]})
    return out


def top_users(since: datetime, limit: int = 5) -> list[dict[str, Any]]:
    tokens = func.coalesce(func.sum(RequestLog.tokens_in + RequestLog.tokens_out), 0)
    rows = db.session.execute(
        select(RequestLog.user_id, User.name, func.count(RequestLog.id), tokens)
        .join(User, User.id == RequestLog.user_id)
        .where(RequestLog.created_at >= since)
        .group_by(RequestLog.user_id, User.name).order_by(tokens.desc()).limit(limit)
    ).all()
    return [{"user_id": uid, "name": name, "requests": int(n), "tokens": int(t)} for uid, name, n, t in rows]


def by_model(since: datetime, user_id: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    tokens = func.coalesce(func.sum(RequestLog.tokens_in + RequestLog.tokens_out), 0)
    query = (select(RequestLog.model, func.count(RequestLog.id),
                    func.coalesce(func.sum(RequestLog.tokens_in), 0),
                    func.coalesce(func.sum(RequestLog.tokens_out), 0))
             .where(RequestLog.created_at >= since).group_by(RequestLog.model).order_by(tokens.desc()))
    if user_id is not None:
        query = query.where(RequestLog.user_id == user_id)
    if limit:
        query = query.limit(limit)
    return [{"model": model or "(none)", "requests": int(n), "tokens_in": int(tin), "tokens_out": int(tout),
             "tokens": int(tin) + int(tout)} for model, n, tin, tout in db.session.execute(query).all()]


def pool_health() -> dict[str, int]:
    """Upstream keys per health state; a key switched off by an admin counts as disabled."""
    state = case((UpstreamKey.enabled.is_(False), "disabled"), else_=UpstreamKey.state)
    counts = {name: 0 for name in HEALTH_STATES}
    for name, count in db.session.execute(select(state, func.count()).group_by(state)).all():
        counts[name] = counts.get(name, 0) + int(count)
    return counts

