"""The demo's provisioning (``gateway.demo._provision``) against the real test database:
one transaction per start, the demo user and its first key created together, and a
changed fake-upstream port re-pointing the backends with a routing bump."""
from __future__ import annotations

from sqlalchemy import func, select

from gateway import create_app
from gateway.demo import _provision
from gateway.extensions import db
from gateway.models import Admin, ApiKey, AuditLog, Backend, GenerationCounter, UpstreamKey, User
from tests.conftest import ADMIN_TOKEN


def _count(model: type) -> int:
    return int(db.session.scalar(select(func.count()).select_from(model)) or 0)


def test_provisioning_twice_reuses_the_user_and_repoints_the_backends(env: dict[str, str]) -> None:
    env = {**env, "ADMIN_PASSWORD": "demo-admin-password"}
    app = create_app(env=env)

    first_key, token = _provision(env, "http://127.0.0.1:40001")
    with app.app_context():
        routing_before = db.session.scalar(select(GenerationCounter.value).where(GenerationCounter.name == "routing"))
    second_key, _token = _provision(env, "http://127.0.0.1:40002")

    assert token == ADMIN_TOKEN and first_key != second_key
    with app.app_context():
        assert (_count(Admin), _count(User), _count(ApiKey), _count(Backend), _count(UpstreamKey)) == (1, 1, 2, 2, 4)
        urls = dict(db.session.execute(select(Backend.name, Backend.base_url)).all())
        assert urls == {"demo-openai": "http://127.0.0.1:40002/v1", "demo-anthropic": "http://127.0.0.1:40002"}
        routing_after = db.session.scalar(select(GenerationCounter.value).where(GenerationCounter.name == "routing"))
        assert routing_after > routing_before
        actions = db.session.scalars(select(AuditLog.action).where(AuditLog.actor == "demo")).all()
        assert actions.count("user.create") == 1 and actions.count("key.create") == 2
        db.session.remove()
        db.engine.dispose()
    client = app.test_client()
    for key in (first_key, second_key):
        response = client.get("/api/usage", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200 and response.get_json()["owner"] == "demo-user"
