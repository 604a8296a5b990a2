"""Token authentication for the admin API, with a per-address failure throttle."""
from __future__ import annotations

from flask import current_app, g, request

from ..errors import ApiError
from ..limiter import FailureThrottle, client_ip, throttle_for
from ..secrets_box import constant_time_in
from . import bp


def throttle() -> FailureThrottle:
    return throttle_for("admin-auth-failures", "ADMIN_AUTH_FAILURES_PER_MINUTE")


def presented_token() -> str | None:
    token = request.headers.get("X-Admin-Key")
    if token:
        return token
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


@bp.before_request
def require_admin_token() -> None:
    ip = client_ip()
    if throttle().blocked(ip):
        raise ApiError(429, "Too many failed admin authentications from this address; retry later",
                       headers={"Retry-After": str(throttle().retry_after(ip))})
    token = presented_token()
    tokens = current_app.config["ADMIN_API_TOKEN"]
    if not token or not tokens or not constant_time_in(token, tokens):
        throttle().count_failure(ip)
        raise ApiError(401, "A valid admin token is required (X-Admin-Key or Authorization: Bearer)")
    tokens_index = next(i for i, t in enumerate(tokens) if constant_time_in(token, [t]))
    g.admin_actor = f"api-token-{tokens_index + 1}"
