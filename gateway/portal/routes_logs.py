"""Request logs (filtered, paginated, CSV export) and the audit log. The filters are
the admin JSON API's (``services.reports.filtered_logs``), so both surfaces select the
same rows."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from flask import Response, render_template, request, stream_with_context
from sqlalchemy import select

from ..extensions import db
from ..models import AuditLog, RequestLog, User
from ..services import reports
from ..timeutil import isoformat
from . import bp
from .common import paginate

FILTERS = ("user_id", "key_id", "model", "status", "since", "until")
CSV_COLUMNS = ("id", "request_id", "created_at", "user_id", "key_id", "backend_id", "upstream_key_id", "route",
               "model", "status", "streamed", "tokens_in", "tokens_out", "estimated", "bytes_in", "bytes_out",
               "latency_ms", "ttfb_ms", "outcome", "error_type", "client_ip", "cost")
CSV_MAX_ROWS = 100_000
CSV_BATCH = 1000


def _query_or_error() -> tuple[Any, str | None]:
    try:
        return reports.filtered_logs(reports.parse_log_filters(request.args)), None
    except reports.FilterError as error:
        return select(RequestLog).where(RequestLog.id < 0), str(error)


@bp.get("/logs")
def logs() -> Any:
    query, error = _query_or_error()
    page = paginate(query)
    ids = {row.user_id for row in page.items if row.user_id is not None}
    names = dict(db.session.execute(select(User.id, User.name).where(User.id.in_(ids))).all()) if ids else {}
    filters = {name: request.args.get(name, "") for name in FILTERS}
    return render_template("portal/logs.html", page=page, names=names, filters=filters, error=error), \
        422 if error else 200


def _cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas: model names and routes come from clients."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return isoformat(value) if hasattr(value, "isoformat") else value


@bp.get("/logs.csv")
def logs_csv() -> Any:
    query, error = _query_or_error()
    if error:
        return Response(error + "\n", status=422, mimetype="text/plain")

    def rows() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        offset = 0
        while offset < CSV_MAX_ROWS:
            batch = list(db.session.scalars(query.limit(CSV_BATCH).offset(offset)))
            for row in batch:
                writer.writerow([_cell(getattr(row, column)) for column in CSV_COLUMNS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(batch) < CSV_BATCH:
                break
            offset += CSV_BATCH

    return Response(stream_with_context(rows()), mimetype="text/csv", headers={
        "Content-Disposition": "attachment; filename=request-logs.csv", "Cache-Control": "no-store"})


@bp.get("/audit")
def audit_log() -> Any:
    query = select(AuditLog).order_by(AuditLog.id.desc())
    action = request.args.get("action", "").strip()
    if action:
        query = query.where(AuditLog.action == action)
    return render_template("portal/audit.html", page=paginate(query), action=action)
