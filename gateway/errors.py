"""The one home of error shapes. Each API family answers errors the way its clients'
SDKs parse them:

- OpenAI routes:    {"error": {"message", "type", "code", "param"}}
- Anthropic routes: {"type": "error", "error": {"type", "message"}}
- Gemini routes:    {"error": {"code": <HTTP status>, "message", "status": <google.rpc code name>}}
- everything else:  {"error": {"code", "message"}}  (admin API, usage API, ops)

Messages help the caller and never contain a secret.
"""
from __future__ import annotations

from typing import Any

from flask import Response, jsonify

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}
# google.rpc.Code names, as Google's APIs put them in ``error.status``; the SDKs
# (google-genai, Gemini CLI) read ``code`` and ``status``. A quota refusal (402) is
# RESOURCE_EXHAUSTED like a rate limit: Google has no payment-required status.
GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
GENERIC_CODES = {
    400: "bad_request",
    401: "unauthorized",
    402: "quota_exhausted",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


class ApiError(Exception):
    """Raised anywhere in request handling; rendered by the blueprint's error family."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}


def openai_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": OPENAI_TYPES.get(status, "api_error"),
                      "code": code, "param": param}}


def anthropic_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}


def gemini_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """Google's error shape; KeyGate's own code (``quota_exceeded``, ...) travels as a
    ``google.rpc.ErrorInfo`` reason in ``details``, where Google puts its own reasons."""
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": GEMINI_STATUSES.get(status, "INTERNAL" if status >= 500 else "UNKNOWN")}
    if code:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code,
                             "domain": "keygate"}]
    return {"error": error}


def generic_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code or GENERIC_CODES.get(status, "error"), "message": message}}


def render(family: str, error: ApiError) -> Response:
    """Turn an ApiError into a JSON response in ``family``'s shape."""
    if family == "openai":
        body = openai_body(error.status, error.message, error.code, error.param)
    elif family == "anthropic":
        body = anthropic_body(error.status, error.message)
    elif family == "gemini":
        body = gemini_body(error.status, error.message, error.code)
    else:
        body = generic_body(error.status, error.message, error.code)
    if error.extra:
        body["error"].update(error.extra)
    response = jsonify(body)
    response.status_code = error.status
    for name, value in error.headers.items():
        response.headers[name] = value
    return response
