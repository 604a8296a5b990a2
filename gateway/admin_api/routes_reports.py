"""Read-only reports: request logs, aggregated usage, audit log."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import jsonify, request
from sqlalchemy import case, func, select

from ..errors import ApiError
from ..extensions import db
from ..lookups import MAX_ID
from ..models import AuditLog, Backend, RequestLog, User
from ..services import audit
from ..timeutil import isoformat, parse_datetime
from . import bp
from .common import paginate


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


def _time_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        return parse_datetime(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be an ISO 8601 timestamp",
                       extra={"fields": {name: "must be an ISO 8601 timestamp"}}) from None


def _int_filter(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be an integer", extra={"fields": {name: "must be an integer"}}) from None
    if not 0 <= value <= MAX_ID:  # the columns are INTEGER; the driver would fail on more
        raise ApiError(422, f"{name} is out of range", extra={"fields": {name: f"must be between 0 and {MAX_ID}"}})
    return value


def filtered_logs():  # type: ignore[no-untyped-def]
    """The log query with the contract's filters applied (shared with the portal's CSV export)."""
    query = select(RequestLog).order_by(RequestLog.id.desc())
    for name, column in (("user_id", RequestLog.user_id), ("key_id", RequestLog.key_id),
                         ("status", RequestLog.status)):
        value = _int_filter(name)
        if value is not None:
            query = query.where(column == value)
    model = request.args.get("model")
    if model:
        query = query.where(RequestLog.model == model)
    since, until = _time_arg("since"), _time_arg("until")
    if since:
        query = query.where(RequestLog.created_at >= since)
    if until:
        query = query.where(RequestLog.created_at < until)
    return query


@bp.get("/logs")
def list_logs():  # type: ignore[no-untyped-def]
    return paginate(filtered_logs(), log_to_dict)


GROUPS = ("user", "model", "backend", "day")


@bp.get("/usage")
def usage_report():  # type: ignore[no-untyped-def]
    group_by = request.args.get("group_by", "day")
    if group_by not in GROUPS:
        raise ApiError(422, f"group_by must be one of {', '.join(GROUPS)}",
                       extra={"fields": {"group_by": f"must be one of {', '.join(GROUPS)}"}})
    since, until = _time_arg("since"), _time_arg("until")
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
    if group_by == "user":
        ids = [r[0] for r in rows if r[0] is not None]
        names = dict(db.session.execute(select(User.id, User.name).where(User.id.in_(ids))).all()) if ids else {}
    elif group_by == "backend":
        ids = [r[0] for r in rows if r[0] is not None]
        names = dict(db.session.execute(select(Backend.id, Backend.name).where(Backend.id.in_(ids))).all()) if ids else {}
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
    return jsonify({"group_by": group_by, "since": isoformat(since), "until": isoformat(until),
                    "items": items, "total": len(items)})


@bp.get("/audit")
def list_audit():  # type: ignore[no-untyped-def]
    query = select(AuditLog).order_by(AuditLog.id.desc())
    action = request.args.get("action")
    if action:
        query = query.where(AuditLog.action == action)
    return paginate(query, audit.to_dict)
