"""gateway.pg_gevent: psycopg's waits on the gevent hub stay cooperative and correct.

Each case runs in a fresh interpreter that monkey-patches first (as a gunicorn gevent
worker does), against the real PostgreSQL of the run. On a SQLite run there is no
PostgreSQL to talk to; the CI runs the suite on both databases.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, _postgres_url

pytestmark = pytest.mark.skipif(not _postgres_url(), reason="needs GATEWAY_TEST_DATABASE_URL (PostgreSQL)")

PRELUDE = """
from gevent import monkey
monkey.patch_all()
import json, sys, time
import gevent, psycopg
from psycopg import waiting
from gateway import pg_gevent
url = sys.argv[1].replace("postgresql+psycopg://", "postgresql://")
"""


def _run(body: str) -> dict:
    script = PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script, _postgres_url()], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_install_replaces_psycopgs_wait_only_under_gevent():
    out = _run("""
        before = waiting.wait.__name__
        print(json.dumps({"before": before, "installed": pg_gevent.install(), "after": waiting.wait.__name__,
                          "again": pg_gevent.install()}))
    """)
    assert out == {"before": "wait_poll", "installed": True, "after": "wait_gevent", "again": True}

    plain = subprocess.run([sys.executable, "-c", "from gateway import pg_gevent; print(pg_gevent.install())"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert plain.stdout.strip() == "False"


def test_five_concurrent_sleeps_overlap_instead_of_blocking_the_worker():
    out = _run("""
        pg_gevent.install()
        def one():
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_sleep(0.4)")
        for g in [gevent.spawn(one)]: g.get()  # warm up imports and the first connect
        started = time.monotonic()
        gevent.joinall([gevent.spawn(one) for _ in range(5)], raise_error=True)
        print(json.dumps({"elapsed": time.monotonic() - started}))
    """)
    # Blocking waits would take 5 x 0.4 = 2.0 s; cooperative ones about 0.4 s plus connects.
    assert out["elapsed"] < 1.2


def test_results_errors_and_large_statements_come_through_unchanged():
    out = _run("""
        pg_gevent.install()
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute("SELECT g, md5(g::text) FROM generate_series(1, 20000) g").fetchall()
            try:
                conn.execute("SELECT * FROM no_such_table_here")
                error = None
            except psycopg.errors.UndefinedTable as exc:
                error = type(exc).__name__
            still_usable = conn.execute("SELECT 41 + 1").fetchone()[0]
            # An 8 MB parameter does not fit the socket buffer: psycopg waits for the
            # socket to become writable (and readable) while sending it.
            big = "x" * (8 * 1024 * 1024)
            echoed = conn.execute("SELECT length(%s::text)", (big,)).fetchone()[0]
        print(json.dumps({"rows": len(rows), "last": rows[-1][0], "error": error, "usable": still_usable,
                          "echoed": echoed}))
    """)
    assert out == {"rows": 20000, "last": 20000, "error": "UndefinedTable", "usable": 42,
                   "echoed": 8 * 1024 * 1024}
