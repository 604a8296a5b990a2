from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flask import Response, current_app, jsonify, request
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db
from ..models import Backend, UpstreamKey, User
from ..worker_state import worker_state
from . import bp

log = logging.getLogger("gateway.ops")
READY_TIMEOUT = 2.0


@bp.get("/")
def root() -> Response:
    """``GET /`` and ``HEAD /`` answer 200: API clients warm their connection up with
    them and treat anything else as the gateway being down. A browser gets a page
    pointing at the portal; an API client a small JSON document."""
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        page = ('<!doctype html><title>KeyGate</title><h1>KeyGate</h1>'
                '<p>An API gateway. The admin portal is at <a href="/admin/">/admin/</a>.</p>')
        return Response(page, content_type="text/html; charset=utf-8")
    return jsonify({"service": "keygate", "status": "ok", "portal": "/admin/", "health": "/health"})


@bp.get("/health")
def health() -> Response:
    """Liveness: answers even when the database is down (with the counts left out)."""
    body: dict = {"status": "ok", "version": current_app.config["VERSION"]}
    try:
        states = dict(
            db.session.execute(
                select(UpstreamKey.state, func.count()).where(UpstreamKey.enabled.is_(True)).group_by(UpstreamKey.state)
            ).all()
        )
        body["upstream_keys"] = {state: int(states.get(state, 0)) for state in
                                 ("healthy", "cooling_down", "unhealthy", "disabled")}
        body["backends"] = int(db.session.scalar(select(func.count()).select_from(Backend)) or 0)
        body["users"] = int(db.session.scalar(select(func.count()).select_from(User)) or 0)
    except SQLAlchemyError as exc:
        log.warning("health: database query failed: %s", type(exc).__name__)
        db.session.rollback()
        body["database"] = "unavailable"
    return jsonify(body)


@bp.get("/ready")
def ready() -> Response:
    """Readiness: 503 naming the failing dependency, so a load balancer drains us. Each
    check gets READY_TIMEOUT seconds, so a hung database cannot hang the probe too."""
    from ..limiter import limiter

    engine = db.engine
    storage = limiter.storage
    checks = {
        "database": _within(READY_TIMEOUT, lambda: _database(engine)),
        "limiter_storage": _within(READY_TIMEOUT, lambda: "ok" if storage.check() else "failed: unreachable"),
    }
    ready_ = all(value == "ok" for value in checks.values())
    if not ready_:
        log.warning("not ready: %s", ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"))
    # Warnings do not fail readiness (admin contract: fields are only ever added).
    warnings = worker_state().forwarding.warnings()
    response = jsonify({"status": "ready" if ready_ else "unavailable", "checks": checks, "warnings": warnings})
    response.status_code = 200 if ready_ else 503
    response.headers["Cache-Control"] = "no-store"
    return response


def _database(engine: Engine) -> str:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return "ok"


def _within(seconds: float, check: Callable[[], str]) -> str:
    """Run ``check`` in its own thread (a greenlet under gevent) and stop waiting after
    ``seconds``; the result names the failure without driver text."""
    result: dict[str, str] = {}

    def run() -> None:
        try:
            result["value"] = check()
        except Exception as exc:  # any failure of a dependency is "not ready", named by class
            result["value"] = f"failed: {type(exc).__name__}"

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    return result.get("value") or f"failed: no answer within {seconds:g} s"
