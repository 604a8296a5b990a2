"""Helpers shared by the admin API routes: pagination, the actor, errors."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, g, jsonify, request
from sqlalchemy import Select, func, select

from ..errors import ApiError
from ..extensions import db
from ..limiter import client_ip
from ..services.validation import ValidationError

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def actor() -> str:
    return g.get("admin_actor", "api")


def ip() -> str:
    return client_ip()


def body(optional: bool = False) -> Any:
    """The JSON body; with ``optional``, an empty body means "all defaults"."""
    if optional and not request.get_data(cache=True):
        return {}
    data = request.get_json(silent=True, force=True)
    if data is None:
        raise ApiError(400, "The body must be a JSON object")
    return data


def _int_arg(name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be an integer", extra={"fields": {name: "must be an integer"}}) from None
    if not minimum <= value <= maximum:
        raise ApiError(422, f"{name} must be between {minimum} and {maximum}",
                       extra={"fields": {name: f"must be between {minimum} and {maximum}"}})
    return value


def paginate(query: Select, serialize: Callable[[Any], dict[str, Any]]) -> Response:
    page = _int_arg("page", 1, 1, 10_000_000)
    page_size = _int_arg("page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = db.session.scalars(query.limit(page_size).offset((page - 1) * page_size)).unique().all()
    return jsonify({"items": [serialize(row) for row in rows], "total": int(total or 0),
                    "page": page, "page_size": page_size})


def validation_response(error: ValidationError) -> Response:
    response = jsonify({"error": {"code": "validation_error",
                                  "message": "Invalid fields: " + ", ".join(sorted(error.errors)),
                                  "fields": error.errors}})
    response.status_code = 422
    return response
