"""The stale-reservation sweep runs as a leased background loop in the real server
(gunicorn, gevent workers), not inside anyone's request: a reservation left by a
request that died is released by one worker, and its quota is free again."""
from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from gateway.extensions import db
from gateway.models import Lease, Reservation, UsageCounter
from gateway.proxy import quota
from gateway.proxy.authenticate import Caller
from gateway.services import users as user_service
from gateway.timeutil import utcnow
from gateway.transaction import committed
from tests.fixtures.gateway_server import start_gateway


def _dead_request_hold(app: Any) -> int:
    """A reservation as a request leaves it when its worker dies before settling."""
    with app.app_context(), committed():
        user = user_service.create({"name": "died", "tier": "pro", "token_quota": 100, "quota_period": "total"},
                                   "test", None)
        user_id = user.id
    caller = Caller(key_id=1, key_prefix="sk-pro-", user_id=user_id, user_name="died", tier="pro", rpm=120, rpd=None,
                    tpm=None, token_quota=100, request_quota=None, byte_quota=None, quota_period="total", reset_day=1)
    with app.test_request_context():
        quota.reserve(caller, uuid.uuid4().hex, 10, 80, 0,
                      now=utcnow() - timedelta(seconds=app.config["RESERVATION_TTL_SECONDS"] + 60))
    return user_id


def _state(app: Any, user_id: int) -> tuple[int, int, list[str]]:
    with app.app_context():
        reserved = db.session.scalar(select(UsageCounter.reserved_tokens).where(UsageCounter.user_id == user_id))
        holds = len(db.session.scalars(select(Reservation.id)).all())
        leases = list(db.session.scalars(select(Lease.name)).all())
        db.session.remove()
    return int(reserved or 0), holds, leases


def test_the_background_sweep_releases_a_dead_requests_reservation(app: Any, env: dict[str, str], tmp_path: Path):
    user_id = _dead_request_hold(app)
    assert _state(app, user_id)[:2] == (90, 1)
    server = start_gateway({**env, "SWEEP_INTERVAL_SECONDS": "1"}, tmp_path / "gateway.log", workers=2)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _state(app, user_id)[1]:
            time.sleep(0.2)
        reserved, holds, leases = _state(app, user_id)
        output = server.output()
    finally:
        server.stop()
    assert (reserved, holds) == (0, 0), output
    assert "reservation-sweep" in leases
    assert output.count("released 1 stale quota reservation(s)") == 1  # one worker swept it, once
    assert "Traceback" not in output
