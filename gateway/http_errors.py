"""App-wide error handlers: every error a client can trigger answers JSON in the shape
its API family expects (see ``errors``), and an unexpected exception answers a
generic 500 without a traceback or driver text."""
from __future__ import annotations

import logging

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from .api_family import error_format, route_family
from .db_failures import UNAVAILABLE
from .errors import GENERIC_CODES, ApiError, render

log = logging.getLogger("gateway.errors")


def _format() -> str:
    """The error shape the current request's clients parse."""
    return error_format(route_family(request.path, current_app.config["PROXY_PREFIX"]))


def _wants_html() -> bool:
    """Browser pages (the portal and the public usage page) keep Werkzeug's HTML errors."""
    family = route_family(request.path, current_app.config["PROXY_PREFIX"])
    return family == "portal" or (family == "usage" and request.path.rstrip("/") == "/usage")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return render(_format(), error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if _wants_html():
            return error.get_response()  # type: ignore[return-value]
        messages = {
            404: f"No route for {request.method} {request.path}",
            405: f"Method {request.method} is not allowed here",
            413: "Request body is too large",
        }
        message = messages.get(status, error.description or error.name)
        # A non-null code (``not_found``...): clients such as Codex retry an error without one.
        response = render(_format(), ApiError(status, message, code=GENERIC_CODES.get(status)))
        if status == 405 and error.get_response().headers.get("Allow"):
            response.headers["Allow"] = error.get_response().headers["Allow"]
        return response

    def _database_down(error: Exception) -> Response:
        log.error("database unavailable: %s", type(error).__name__)
        return render(_format(),
                      ApiError(503, "The gateway's database is unavailable; retry shortly",
                               headers={"Retry-After": "5"}))

    for failure in UNAVAILABLE:  # every layer's "database unavailable", one answer
        app.register_error_handler(failure, _database_down)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(_format(), ApiError(500, "Internal error"))
