"""App-wide error handlers: every error a client can trigger answers JSON in the shape
its API family expects (see ``errors``), and an unexpected exception answers a
generic 500 without a traceback or driver text."""
from __future__ import annotations

import logging

from flask import Flask, Response, request
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from .errors import ApiError, render

log = logging.getLogger("gateway.errors")


def family_for_path(path: str) -> str:
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/"):
        return "openai"
    return "generic"


def _wants_html() -> bool:
    return request.path.startswith("/admin") or request.path in ("/usage", "/usage/")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return render(family_for_path(request.path), error)

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
        response = render(family_for_path(request.path), ApiError(status, message))
        if status == 405 and error.get_response().headers.get("Allow"):
            response.headers["Allow"] = error.get_response().headers["Allow"]
        return response

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_down(error: Exception) -> Response:
        log.error("database unavailable: %s", type(error).__name__)
        return render(family_for_path(request.path),
                      ApiError(503, "The gateway's database is unavailable; retry shortly",
                               headers={"Retry-After": "5"}))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(family_for_path(request.path), ApiError(500, "Internal error"))
