"""``GET /api/usage`` answers a key's owner its quota and usage; ``/usage`` is the page
whose script calls it. The key travels in a header (the page never puts it in a URL or
stores it); every answer is ``no-store``, and the API is throttled per address so it
cannot be used to test guessed keys at speed."""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify, render_template, request

from ..limiter import limiter
from ..models import ApiKey
from ..periods import EPOCH
from ..services import keys as key_service
from ..services import reports
from ..services import users as user_service
from ..timeutil import isoformat, parse_datetime, utcnow
from . import bp
from .lookup import find_key, key_from_request

DAILY_DAYS = 14
UNAUTHORIZED = {"error": {"code": "invalid_key",
                          "message": "The key is missing, malformed or unknown. Paste the full key you were given."}}


def _rate() -> str:
    return current_app.config["USAGE_API_RATE"]


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _percent(used: int, quota: int | None) -> float | None:
    if not quota:
        return None if quota is None else 100.0
    return round(min(100.0, used * 100.0 / quota), 1)


def usage_report(key: ApiKey) -> dict[str, Any]:
    """Everything the usage page shows for ``key``'s owner in the current period."""
    user = key.user
    usage = user_service.current_usage(user)
    status = key_service.status(key)
    status = "active" if status == "rotating" else status
    quota, used = user.token_quota, usage["tokens"]
    exhausted = any(limit is not None and value >= limit for limit, value in (
        (quota, used), (user.request_quota, usage["requests"]), (user.byte_quota, usage["bytes"])))
    if status == "active" and exhausted:
        status = "exhausted"
    since = parse_datetime(usage["period_start"]) if usage["period_start"] else EPOCH
    return {
        "owner": user.name, "tier": user.tier.name, "status": status,
        "key": f"{key.prefix}****{key.last4}", "label": key.label,
        "quota": quota, "used": used, "tokens_in": usage["tokens_in"], "tokens_out": usage["tokens_out"],
        "remaining": max(0, quota - used) if quota is not None else None, "percent": _percent(used, quota),
        "period": user.quota_period, "period_start": usage["period_start"], "period_end": usage["period_end"],
        "requests": usage["requests"], "request_quota": user.request_quota,
        "rpm_limit": user.tier.rpm, "last_used_at": isoformat(key.last_used_at),
        "expires_at": isoformat(key.expires_at), "grace_until": isoformat(key.grace_until),
        "models": reports.by_model(since, user_id=user.id),
        "daily": [{"date": d["date"], "requests": d["requests"], "tokens": d["tokens"]}
                  for d in reports.daily(DAILY_DAYS, user_id=user.id, now=utcnow())],
    }


@bp.get("/api/usage")
@limiter.limit(_rate)
def api_usage() -> Response:
    key = find_key(key_from_request(request, allow_query=True))
    if key is None:
        response = jsonify(UNAUTHORIZED)
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="keygate"'
        return _no_store(response)
    return _no_store(jsonify(usage_report(key)))


@bp.get("/usage")
def usage_page() -> Response:
    return _no_store(Response(render_template("usage.html")))
