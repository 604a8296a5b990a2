"""Every response carries an ``X-Request-ID``: the caller's (if it is sane) or a new one,
so a client's report can be matched to a request-log row and a log line."""
from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def current_request_id() -> str:
    rid = g.get("request_id")
    if rid is None:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _SANE.match(incoming) else uuid.uuid4().hex
        g.request_id = rid
    return rid


def init_app(app: Flask) -> None:
    @app.before_request
    def _assign() -> None:
        current_request_id()

    @app.after_request
    def _stamp(response: Response) -> Response:
        response.headers["X-Request-ID"] = current_request_id()
        return response
