"""Per-request metrics and the one JSON log line per request.

Every request ends in exactly one "finished" event:

- a proxied request that reached accounting ends when ``record`` has written its
  usage (``outcome_recorded``): for a stream that is after the last byte, outside the
  request context, so what the request context knew (tier, key prefix, start time)
  travels in a context variable of the greenlet that serves the request;
- everything else (admin API, a 401, a 429 before any upstream was chosen) ends in
  ``after_request``.

``keygate_requests_total`` is counted in ``after_request`` for all of them, because
the status is decided before the first byte of a stream.
"""
from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from flask import Flask, Response, g, request

from ..api_family import route_family
from ..requestid import current_request_id
from ..worker_state import worker_state
from . import metrics

if TYPE_CHECKING:
    from ..limiter import StorageHealth

log = logging.getLogger("gateway.request")
errors_log = logging.getLogger("gateway.observability")


@dataclass
class _Pending:
    request_id: str
    method: str
    family: str
    started: float
    per_user: bool
    tier: str = "none"
    key_prefix: str | None = None
    done: bool = False


_pending: ContextVar[_Pending | None] = ContextVar("keygate_pending_request", default=None)


def note_caller(caller: Any) -> None:
    """Called once the key is authenticated: tier and display prefix (never the key)."""
    pending = _pending.get()
    if pending is not None:
        pending.tier, pending.key_prefix = caller.tier, caller.key_prefix


def sync_limiter_errors(health: StorageHealth) -> None:
    """Carry the worker's rate-limit storage failure count into the shared counter (it
    counts every storage failure, including those after the response; we add the
    difference since the last look, on each request and each scrape)."""
    total = health.errors
    if total > health.exported:
        metrics.LIMITER_STORAGE_ERRORS.inc(total - health.exported)
        health.exported = total


def stream_opened() -> None:
    metrics.OPEN_STREAMS.inc()


def stream_closed() -> None:
    metrics.OPEN_STREAMS.dec()


def outcome_recorded(out: Any) -> None:
    """After accounting: latency, tokens and upstream metrics, and the request's log line.
    Never raises: observability must not break the request it observes."""
    try:
        _outcome_recorded(out)
    except Exception:  # a bug here must not turn into a lost response
        errors_log.exception("observing request %s failed", out.request_id)


def _outcome_recorded(out: Any) -> None:
    pending = _pending.get()
    if pending is None or pending.request_id != out.request_id:
        pending = None
    family = pending.family if pending else (out.family or "other")
    if out.latency_ms is not None:
        metrics.LATENCY.labels(family).observe(out.latency_ms / 1000)
    if out.ttfb_ms is not None:
        metrics.TTFB.labels(family).observe(out.ttfb_ms / 1000)
    if out.backend_id is not None:
        backend = str(out.backend_id)
        metrics.UPSTREAM_REQUESTS.labels(backend, out.outcome).inc()
        if out.latency_ms is not None:
            metrics.UPSTREAM_LATENCY.labels(backend).observe(out.latency_ms / 1000)
        if out.outcome in ("upstream_error", "upstream_timeout") or out.status >= 500:
            metrics.UPSTREAM_ERRORS.labels(backend, (out.error_type or f"status_{out.status}")[:64]).inc()
        if out.tokens_in or out.tokens_out:
            model = metrics.model_label(out.model)
            metrics.TOKENS.labels(model, "in").inc(out.tokens_in)
            metrics.TOKENS.labels(model, "out").inc(out.tokens_out)
    if pending and pending.per_user and out.user_id is not None:
        metrics.USER_REQUESTS.labels(str(out.user_id)).inc()
    fields = {
        "event": "request", "request_id": out.request_id, "method": pending.method if pending else None,
        "route": out.route, "family": family, "status": out.status,
        "latency_ms": _ms(out.latency_ms), "ttfb_ms": _ms(out.ttfb_ms), "user_id": out.user_id,
        "key_prefix": pending.key_prefix if pending else None, "tier": pending.tier if pending else None,
        "model": out.model, "tokens_in": out.tokens_in, "tokens_out": out.tokens_out, "estimated": out.estimated,
        "backend_id": out.backend_id, "upstream_key_id": out.upstream_key_id, "outcome": out.outcome,
        "error_type": out.error_type, "streamed": out.streamed, "bytes_in": out.bytes_in,
        "bytes_out": out.bytes_out, "client_ip": out.client_ip,
    }
    log.info("request", extra={"fields": fields})
    if pending:
        pending.done = True


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def init_app(app: Flask) -> None:
    prefix = app.config["PROXY_PREFIX"]
    per_user = app.config["METRICS_PER_USER"]

    @app.before_request
    def _start() -> None:
        _pending.set(_Pending(request_id=current_request_id(), method=request.method,
                              family=route_family(request.path, prefix), started=time.monotonic(),
                              per_user=per_user))

    @app.after_request
    def _finish(response: Response) -> Response:
        pending = _pending.get()
        if pending is None or pending.request_id != current_request_id():
            return response
        status = response.status_code
        sync_limiter_errors(worker_state().storage)
        metrics.REQUESTS.labels(pending.family, str(status), pending.tier).inc()
        if status in (402, 429):
            kind = g.get("keygate_reject_code") or ("quota" if status == 402 else "rate_limit")
            metrics.REJECTIONS.labels(kind).inc()
        if pending.done or (request.blueprint == "proxy" and response.is_streamed):
            return response  # logged by outcome_recorded (already, or after the last byte)
        latency = (time.monotonic() - pending.started) * 1000
        metrics.LATENCY.labels(pending.family).observe(latency / 1000)
        if pending.family == "ops":
            return response  # probes and scrapes every few seconds would drown the log
        from ..limiter import client_ip

        log.info("request", extra={"fields": {
            "event": "request", "request_id": pending.request_id, "method": pending.method,
            "route": request.path, "family": pending.family, "status": status, "latency_ms": _ms(latency),
            "key_prefix": pending.key_prefix, "tier": pending.tier if pending.key_prefix else None,
            "outcome": "ok" if status < 400 else "rejected", "client_ip": client_ip(),
        }})
        return response

    _count_rejection_codes(app)


def _count_rejection_codes(app: Flask) -> None:
    """Wrap the app's ApiError handler so a 402/429 remembers its code (``rate_limit_key``,
    ``auth_rate_limited``, ``quota_exhausted``...) for the rejection metric. The codes are
    constants in our code, so the label stays bounded."""
    from ..errors import ApiError

    handlers = app.error_handler_spec.get(None, {}).get(None, {})
    render = handlers.get(ApiError)
    if render is None:
        return

    def counted(error: ApiError) -> Response:
        if error.status in (402, 429):
            g.keygate_reject_code = (error.code or "").replace("-", "_")[:48] or None
        return cast(Response, render(error))  # the handler registered by http_errors

    app.register_error_handler(ApiError, counted)
