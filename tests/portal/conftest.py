"""Portal and usage fixtures: signed-in clients for each role, and small factories that
write rows the proxy would write (UsageCounter, RequestLog) through the real models."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway import create_app
from tests.portal.helpers import ADMIN_PASSWORD, VIEWER_PASSWORD, sign_in


def build_app(env: dict[str, str], **extra_env: str) -> Flask:
    """An app with extra environment settings (e.g. a small sign-in failure budget)."""
    application = create_app(env={**env, **extra_env})
    application.config.update(TESTING=True, WTF_CSRF_ENABLED=True)
    return application


@pytest.fixture
def admins(app: Flask) -> dict[str, int]:
    from gateway.services.admins import create as create_admin
    from gateway.transaction import committed

    with app.app_context(), committed():
        ids = {"admin": create_admin("alice", ADMIN_PASSWORD, "admin").id,
               "viewer": create_admin("victor", VIEWER_PASSWORD, "viewer").id}
    return ids


@pytest.fixture
def admin_client(app: Flask, admins: dict[str, int]) -> FlaskClient:
    client = app.test_client()
    assert sign_in(client, "alice", ADMIN_PASSWORD).status_code == 302
    return client


@pytest.fixture
def viewer_client(app: Flask, admins: dict[str, int]) -> FlaskClient:
    client = app.test_client()
    assert sign_in(client, "victor", VIEWER_PASSWORD).status_code == 302
    return client


@pytest.fixture
def make_user(app: Flask) -> Callable[..., int]:
    from gateway.services import users
    from gateway.transaction import committed

    def make(name: str = "Dana", **fields: Any) -> int:
        with app.app_context(), committed():
            user_id = users.create({"name": name, **fields}, "test", None).id
        return user_id

    return make


@pytest.fixture
def make_key(app: Flask) -> Callable[..., tuple[int, str]]:
    from gateway.extensions import db
    from gateway.models import User
    from gateway.services import keys
    from gateway.transaction import committed

    def make(user_id: int, **fields: Any) -> tuple[int, str]:
        with app.app_context(), committed():
            key, plaintext = keys.issue(db.session.get(User, user_id), fields, "test", None)
            key_id = key.id
        return key_id, plaintext

    return make


@pytest.fixture
def add_usage(app: Flask) -> Callable[..., None]:
    """Record usage the way the proxy will: the user's counter for the current period,
    plus one request-log row per request."""
    from gateway.extensions import db
    from gateway.models import RequestLog, UsageCounter, User
    from gateway.periods import period_bounds
    from gateway.timeutil import utcnow

    def add(user_id: int, tokens_in: int, tokens_out: int, model: str = "gpt-test", requests: int = 1,
            key_id: int | None = None, status: int = 200, when: datetime | None = None,
            cost: float | None = None) -> None:
        with app.app_context():
            user = db.session.get(User, user_id)
            start, _end = period_bounds(user.quota_period, user.reset_day, utcnow(), app.config["QUOTA_TIMEZONE"])
            counter = db.session.query(UsageCounter).filter_by(user_id=user_id, period_start=start).one_or_none()
            if counter is None:
                counter = UsageCounter(user_id=user_id, period_start=start, tokens_in=0, tokens_out=0,
                                       requests=0, bytes=0, reserved_tokens=0, reserved_requests=0,
                                       reserved_bytes=0)
                db.session.add(counter)
            counter.tokens_in += tokens_in
            counter.tokens_out += tokens_out
            counter.requests += requests
            for index in range(requests):
                db.session.add(RequestLog(
                    request_id=f"req-{user_id}-{model}-{utcnow().timestamp()}-{index}-{tokens_in}",
                    created_at=when or utcnow(), user_id=user_id, key_id=key_id, route="/v1/chat/completions",
                    model=model, status=status, tokens_in=tokens_in // requests, tokens_out=tokens_out // requests,
                    latency_ms=12.5, outcome="ok" if status < 400 else "upstream_error", cost=cost))
            db.session.commit()

    return add
