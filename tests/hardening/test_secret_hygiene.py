"""Run last (see conftest): after every other hardening module - error paths included -
the canary user key, admin token and upstream secret planted at the start, and the
key's HMAC, appear nowhere a secret must not be: responses, pages, gateway output,
request-log and audit rows, /metrics, memcached keys. The database holds no plaintext
user key and no unencrypted upstream secret."""
from __future__ import annotations

import json
import sqlite3

import requests
from sqlalchemy import text
from sqlalchemy.engine import make_url

from gateway.secrets_box import hash_user_key
from tests.conftest import ADMIN_TOKEN, PEPPER

from .conftest import CANARY_UPSTREAM_SECRET, METRICS_TOKEN, World, bearer


def _database_text(world: World) -> str:
    url = make_url(world.database_url)
    if url.get_backend_name() == "sqlite":
        with sqlite3.connect(url.database) as conn:
            return "\n".join(conn.iterdump())
    pieces = []
    with world.engine.connect() as conn:
        columns = conn.execute(text(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND data_type IN ('text', 'character varying', 'json', 'jsonb', 'bytea')")).all()
        for table, column in columns:
            values = conn.execute(text(f'SELECT "{column}"::text FROM "{table}"')).scalars().all()
            pieces += [v for v in values if v]
    return "\n".join(pieces)


def _rows_text(world: World, table: str) -> str:
    with world.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT * FROM {table}")).mappings().all()
    return json.dumps([dict(row) for row in rows], default=str)


def test_canaries_appear_nowhere_after_the_whole_suite(world: World) -> None:
    http = world.http()
    key = world.key
    # a last round of error paths carrying the canaries where a careless gateway echoes them
    http.get(world.url + f"/api/usage?key={key}")
    http.get(world.url + "/usage", params={"key": key})
    http.post(world.url + "/v1/chat/completions", headers=bearer(key + "x"), json={"model": key})
    http.post(world.url + "/v1/chat/completions", headers=bearer(key), json={"model": "gpt-4o-mini",
                                                                           "messages": [{"role": "user",
                                                                                         "content": key}],
                                                                           "api_key": CANARY_UPSTREAM_SECRET})
    http.get(world.url + "/api/admin/users", headers={"X-Admin-Key": ADMIN_TOKEN + "x"})
    http.get(world.url + "/metrics", headers={"Authorization": "Bearer " + ADMIN_TOKEN})
    http.post(world.url + "/v1/chat/completions", headers=bearer(key),
              json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[[status:400]]"}]})
    metrics = requests.get(world.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert metrics.status_code == 200 and "keygate_requests_total" in metrics.text
    memcached_keys = world.memcached.command("lru_crawler metadump all")
    assert "key=" in memcached_keys  # the limiter did store counters there
    logs = world.gateway.output() + "".join(path.read_text(errors="replace") for path in world.extra_logs)
    places = {
        "responses": "\n".join(world.seen),
        "gateway output": logs,
        "request logs": _rows_text(world, "request_logs"),
        "audit log": _rows_text(world, "audit_log"),
        "metrics": metrics.text,
        "memcached keys": memcached_keys,
    }
    digest = hash_user_key(key, PEPPER)
    canaries = {"user key": key, "admin token": ADMIN_TOKEN, "upstream secret": CANARY_UPSTREAM_SECRET,
                "key hash": digest}
    assert len(places["responses"]) > 100_000  # the suite really ran before this
    for place, haystack in places.items():
        for name, canary in canaries.items():
            assert canary not in haystack, f"{name} found in {place}"
            assert canary[-16:] not in haystack, f"tail of {name} found in {place}"
    dump = _database_text(world)
    assert digest in dump  # the dump is real: the key is stored as its hash
    for name, canary in (("user key", key), ("upstream secret", CANARY_UPSTREAM_SECRET)):
        assert canary not in dump, f"{name} in the database"
        assert canary[-16:] not in dump, f"tail of {name} in the database"
