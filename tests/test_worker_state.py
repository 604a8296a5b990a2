"""The worker's state is one object on the app (``gateway.worker_state``): apps never
share a cache, and ``reset()`` leaves a worker equivalent to a fresh one - a key cached
as valid and then revoked underneath (no generation bump to announce it) is refused on
the very next request, and every cache and counter is empty again."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, text

from gateway import create_app
from gateway.proxy import quota
from gateway.proxy.authenticate import Caller
from gateway.worker_state import WorkerState, state_of


def _models(client: Any, key: str) -> int:
    return int(client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code)


def _revoke_underneath(database_url: str, key_id: int) -> None:
    """What a restore or a hand edit does: the row changes, no generation moves."""
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET revoked_at = :t WHERE id = :id"),
                     {"t": datetime(2000, 1, 1), "id": key_id})
    engine.dispose()


def test_reset_makes_a_worker_equivalent_to_a_fresh_one(app: Any, client: Any, env: dict[str, str],
                                                        admin_headers: dict[str, str]):
    created = client.post("/api/admin/keys", headers=admin_headers, json={"name": "cached", "tier": "pro"}).get_json()
    key = created["key"]
    assert _models(client, key) == 200  # the key is now in this worker's snapshot
    with app.test_request_context():
        caller = Caller(key_id=created["id"], key_prefix="sk-pro-", user_id=created["user_id"], user_name="cached",
                        tier="pro", rpm=120, rpd=None, tpm=None, token_quota=None, request_quota=None,
                        byte_quota=None, quota_period="monthly", reset_day=1)
        quota.reserve(caller, uuid.uuid4().hex, 1, 1, 1)
    state = state_of(app)
    assert state.snapshot.auth and state.counter_ids and state.throttles
    assert state.snapshot.loaded

    _revoke_underneath(env["DATABASE_URL"], created["id"])
    assert _models(client, key) == 200  # nothing announced the change: the cache still says valid
    state.reset()
    assert not (state.snapshot.auth or state.counter_ids or state.throttles
                or state.sessions or state.budgets or state.pool.positions or state.pool.secrets)
    assert not state.snapshot.loaded and state.storage.errors == 0 and not state.storage.down
    assert _models(client, key) == 401  # read afresh, without waiting for any refresh


def test_every_app_owns_its_state(env: dict[str, str]):
    first, second = create_app(env=env), create_app(env=env)
    assert isinstance(state_of(first), WorkerState)
    assert state_of(first) is not state_of(second)
    assert state_of(first).snapshot is not state_of(second).snapshot
