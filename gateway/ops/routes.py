from __future__ import annotations

import logging

from flask import current_app, jsonify
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db
from ..models import Backend, UpstreamKey, User
from . import bp

log = logging.getLogger("gateway.ops")


@bp.get("/health")
def health():  # type: ignore[no-untyped-def]
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
def ready():  # type: ignore[no-untyped-def]
    """Readiness: 503 naming the failing dependency, so a load balancer drains us."""
    checks: dict[str, str] = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        db.session.rollback()
        checks["database"] = f"failed: {type(exc).__name__}"
    ready_ = all(value == "ok" for value in checks.values())
    response = jsonify({"status": "ready" if ready_ else "unavailable", "checks": checks})
    response.status_code = 200 if ready_ else 503
    return response
