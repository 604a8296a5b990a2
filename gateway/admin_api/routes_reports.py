"""Read-only reports: request logs, aggregated usage, audit log. The queries are
``services.reports``; these views turn a bad filter into the contract's 422."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import Response, jsonify, request
from sqlalchemy import select

from ..errors import ApiError
from ..models import AuditLog
from ..services import audit, reports
from ..timeutil import isoformat
from . import bp
from .common import paginate

T = TypeVar("T")


def _filter(parse: Callable[[], T]) -> T:
    try:
        return parse()
    except reports.FilterError as error:
        raise ApiError(422, str(error), extra={"fields": {error.field: error.detail}}) from None


@bp.get("/logs")
def list_logs() -> Response:
    filters = _filter(lambda: reports.parse_log_filters(request.args))
    return paginate(reports.filtered_logs(filters), reports.log_to_dict)


@bp.get("/usage")
def usage_report() -> Response:
    group_by = request.args.get("group_by", "day")
    if group_by not in reports.USAGE_GROUPS:
        choices = ", ".join(reports.USAGE_GROUPS)
        raise ApiError(422, f"group_by must be one of {choices}",
                       extra={"fields": {"group_by": f"must be one of {choices}"}})
    since = _filter(lambda: reports.parse_time(request.args, "since"))
    until = _filter(lambda: reports.parse_time(request.args, "until"))
    items = reports.usage_by(group_by, since, until)
    return jsonify({"group_by": group_by, "since": isoformat(since), "until": isoformat(until),
                    "items": items, "total": len(items)})


@bp.get("/audit")
def list_audit() -> Response:
    query = select(AuditLog).order_by(AuditLog.id.desc())
    action = request.args.get("action")
    if action:
        query = query.where(AuditLog.action == action)
    return paginate(query, audit.to_dict)
