"""CPU per proxied request inside one process (Flask test client, SQLite, memory://
limiter, the fake upstream as a real server), for comparing two commits of the hot path.

The wrk-driven ``bench/run.py`` measures the whole stack but moves by a few percent
between runs on a shared machine; this counts only the gateway process's own CPU time
(``time.process_time``) over the same request, so a change in the gateway's Python
cost shows even while the machine is busy. Run it from the checkout to measure:

    .venv/bin/python bench/inprocess.py 2000
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())

from flask_migrate import upgrade  # noqa: E402

from gateway import create_app  # noqa: E402
from tests.conftest import make_env  # noqa: E402
from tests.fixtures.fake_upstream import FakeUpstreamProcess  # noqa: E402


def main(count: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="keygate-inprocess-"))
    fake = FakeUpstreamProcess.start()
    try:
        env = make_env(f"sqlite:///{tmp / 'bench.db'}", tmp / "instance", IP_RPM="100000000",
                       GLOBAL_RPM="100000000", RATELIMIT_STORAGE_URI="memory://", CACHE_REFRESH_SECONDS="0.5",
                       LOG_LEVEL="WARNING")
        app = create_app(env=env)
        with app.app_context():
            upgrade()
        client = app.test_client()
        admin = {"X-Admin-Key": env["ADMIN_API_TOKEN"]}
        tiers = client.get("/api/admin/tiers", headers=admin).get_json()["items"]
        pro = next(t for t in tiers if t["name"] == "pro")["id"]
        assert client.patch(f"/api/admin/tiers/{pro}", json={"rpm": 1_000_000}, headers=admin).status_code == 200
        backend = client.post("/api/admin/backends", headers=admin, json={
            "name": "fake", "kind": "openai", "base_url": fake.url + "/v1", "models": ["gpt-*"]}).get_json()
        client.post(f"/api/admin/backends/{backend['id']}/keys", headers=admin,
                    json={"secret": "sk-upstream-bench-0123456789abcdef", "label": "bench"})
        key = client.post("/api/admin/keys", headers=admin,
                          json={"name": "bench", "tier": "pro", "total_tokens": 10**12}).get_json()["key"]
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(200):  # warm caches, pools and the snapshot
            assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
        cpu, wall = time.process_time(), time.monotonic()
        for _ in range(count):
            client.post("/v1/chat/completions", json=body, headers=headers).get_data()
        cpu_ms = (time.process_time() - cpu) / count * 1000
        wall_ms = (time.monotonic() - wall) / count * 1000
        print(f"{os.getcwd()}: {cpu_ms:.3f} ms CPU per request, {wall_ms:.3f} ms wall ({count} requests)")
    finally:
        fake.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
