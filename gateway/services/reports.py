"""Read-only reports over RequestLog, UsageCounter and UpstreamKey: the request-log
filters and rows the admin API and the portal's log pages share, the admin API's usage
aggregation, the portal dashboard and the public usage page. Views parse their
arguments with ``parse_log_filters`` and render; the queries live here. Queries group
in the database (``date()`` exists on SQLite and PostgreSQL alike) so a busy month
costs one query, not one per row."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, func, select

from ..extensions import db
from ..lookups import MAX_ID
from ..models import HEALTH_STATES, Backend, RequestLog, UpstreamKey, User
from ..timeutil import isoformat, parse_datetime, utcnow

USAGE_GROUPS = ("user", "model", "backend", "day")


class FilterError(ValueError):
    """A query-string filter that cannot be applied: ``field``, a short ``summary`` for
    the message ("user_id is out of range") and the ``detail`` the field reports."""

    def __init__(self, field: str, summary: str, detail: str | None = None) -> None:
        super().__init__(f"{field} {summary}")
        self.field, self.summary, self.detail = field, summary, detail or summary


@dataclass(frozen=True)
class LogFilters:
    user_id: int | None = None
    key_id: int | None = None
    status: int | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def parse_time(args: Mapping[str, str], name: str) -> datetime | None:
    raw = args.get(name)
    if not raw:
        return None
    try:
        return parse_datetime(raw)
    except ValueError:
        raise FilterError(name, "must be an ISO 8601 timestamp") from None


def _parse_int(args: Mapping[str, str], name: str) -> int | None:
    raw = args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise FilterError(name, "must be an integer") from None
    if not 0 <= value <= MAX_ID:  # the columns are INTEGER; PostgreSQL would fail on more
        raise FilterError(name, "is out of range", f"must be between 0 and {MAX_ID}")
    return value


def parse_log_filters(args: Mapping[str, str]) -> LogFilters:
    """The request-log filters of the admin API contract, from a query string."""
    return LogFilters(user_id=_parse_int(args, "user_id"), key_id=_parse_int(args, "key_id"),
                      status=_parse_int(args, "status"), model=args.get("model") or None,
                      since=parse_time(args, "since"), until=parse_time(args, "until"))


def filtered_logs(filters: LogFilters) -> Select[RequestLog]:
    """Request logs newest first with ``filters`` applied; the admin API's list and the
    portal's page and CSV export select the same rows."""
    query = select(RequestLog).order_by(RequestLog.id.desc())
    for value, column in ((filters.user_id, RequestLog.user_id), (filters.key_id, RequestLog.key_id),
                          (filters.status, RequestLog.status)):
        if value is not None:
            query = query.where(column == value)
    if filters.model:
        query = query.where(RequestLog.model == filters.model)
    if filters.since:
        query = query.where(RequestLog.created_at >= filters.since)
    if filters.until:
        query = query.where(RequestLog.created_at < filters.until)
    return query


def log_to_dict(row: RequestLog) -> dict[str, Any]:
    return {
        "id": row.id, "request_id": row.request_id, "created_at": isoformat(row.created_at),
        "user_id": row.user_id, "key_id": row.key_id, "backend_id": row.backend_id,
        "upstream_key_id": row.upstream_key_id, "route": row.route, "model": row.model,
        "status": row.status, "streamed": row.streamed, "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out, "cache_read_tokens": row.cache_read_tokens,
        "cache_creation_tokens": row.cache_creation_tokens, "estimated": row.estimated,
        "bytes_in": row.bytes_in, "bytes_out": row.bytes_out, "latency_ms": row.latency_ms,
        "ttfb_ms": row.ttfb_ms, "outcome": row.outcome, "error_type": row.error_type,
        "client_ip": row.client_ip, "cost": row.cost,
    }


def usage_by(group_by: str, since: datetime | None, until: datetime | None) -> list[dict[str, Any]]:
    """Tokens, requests, errors (status >= 400), cost and bytes per ``group_by`` (one of
    USAGE_GROUPS) over ``[since, until)``; user and backend groups carry their name."""
    column = {
        "user": RequestLog.user_id, "model": RequestLog.model, "backend": RequestLog.backend_id,
        "day": func.date(RequestLog.created_at),
    }[group_by]
    query = select(
        column.label("group"),
        func.coalesce(func.sum(RequestLog.tokens_in), 0),
        func.coalesce(func.sum(RequestLog.tokens_out), 0),
        func.count(RequestLog.id),
        func.coalesce(func.sum(case((RequestLog.status >= 400, 1), else_=0)), 0),
        func.sum(RequestLog.cost),
        func.coalesce(func.sum(RequestLog.bytes_in + RequestLog.bytes_out), 0),
    ).group_by(column).order_by(column)
    if since:
        query = query.where(RequestLog.created_at >= since)
    if until:
        query = query.where(RequestLog.created_at < until)
    rows = db.session.execute(query).all()
    names: dict[Any, str] = {}
    ids = [r[0] for r in rows if r[0] is not None]
    if group_by == "user" and ids:
        names = dict(db.session.execute(select(User.id, User.name).where(User.id.in_(ids))).all())
    elif group_by == "backend" and ids:
        names = dict(db.session.execute(select(Backend.id, Backend.name).where(Backend.id.in_(ids))).all())
    items = []
    for group, tin, tout, count, errors, cost, nbytes in rows:
        item: dict[str, Any] = {
            group_by: str(group) if group_by == "day" and group is not None else group,
            "tokens_in": int(tin), "tokens_out": int(tout), "requests": int(count), "errors": int(errors),
            "cost": round(float(cost), 6) if cost is not None else None, "bytes": int(nbytes),
        }
        if names:
            item["name"] = names.get(group)
        items.append(item)
    return items


def day_start(now: datetime | None = None) -> datetime:
    """Midnight UTC of ``now``'s day (the dashboard counts days in UTC)."""
    now = now or utcnow()
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _totals_columns() -> tuple[Any, ...]:
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


def totals(since: datetime) -> dict[str, Any]:
    """Requests, tokens in/out, errors (status >= 400) and cost (None when no price is known)."""
    query = select(*_totals_columns()).where(RequestLog.created_at >= since)
    return _totals(db.session.execute(query).one())


def windows() -> dict[str, dict[str, Any]]:
    today = day_start()
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

