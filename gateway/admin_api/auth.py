"""Token authentication for the admin API, with a per-address failure throttle.

There is no username here, so the throttle is per address only: failing on purpose
locks out the failing address and nobody else (unlike the portal's sign-in, see
``portal/sign_in_limits.py``). The failure that locks an address out is logged once as a
security event (``audit_log`` action ``admin_api.auth_locked``, ``gateway.security``
warning); the attempts refused during the lockout are not.
"""
from __future__ import annotations

import logging

from flask import current_app, g, request

from ..errors import ApiError
from ..limiter import FailureThrottle, client_ip, throttle_for
from ..secrets_box import constant_time_in
from ..services import audit
from ..transaction import committed
from . import bp

log = logging.getLogger("gateway.security")
LOCKED_ACTION = "admin_api.auth_locked"


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
        if throttle().blocked(ip):  # this failure used up the budget: the lockout starts now
            _security_event(ip)
        raise ApiError(401, "A valid admin token is required (X-Admin-Key or Authorization: Bearer)")
    tokens_index = next(i for i, t in enumerate(tokens) if constant_time_in(token, [t]))
    g.admin_actor = f"api-token-{tokens_index + 1}"


def _security_event(ip: str) -> None:
    retry_after = throttle().retry_after(ip)
    detail = {"scope": "address", "retry_after": retry_after, "limit": throttle().limit_text}
    log.warning("admin API token attempts locked", extra={"fields": {"event": "admin_api_auth_locked",
                                                                      "client_ip": ip, **detail}})
    with committed():
        audit.log_action("security", LOCKED_ACTION, "admin_api", None, detail, ip)
