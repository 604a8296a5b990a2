"""Shared fixtures. Everything real: a SQLite file (or the PostgreSQL database named by
GATEWAY_TEST_DATABASE_URL, where a connection failure fails the run), migrations
applied with Flask-Migrate, and the app built by the real factory.

Fixtures that start servers live in ``tests/fixtures/`` and are registered here as
plugins, so every test module and conftest can ask for them by name without importing
them (pytest only accepts ``pytest_plugins`` in the root conftest)."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from gateway import create_app
from gateway.config import normalise_database_url

pytest_plugins = ["tests.fixtures.fake_upstream", "tests.fixtures.memcached"]

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token-0123456789"
PEPPER = "test-pepper-abcdefghijklmnop"
ENCRYPTION_KEY = Fernet.generate_key().decode()
RESET_TABLES = ["stored_responses", "reservations", "usage_counters", "request_logs", "audit_log", "upstream_keys",
                "backends", "api_keys", "users", "admins", "leases", "generations", "tiers"]


def _postgres_url() -> str | None:
    return os.environ.get("GATEWAY_TEST_DATABASE_URL") or None


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keygate")


@pytest.fixture(scope="session")
def database_url(tmp_root: Path) -> str:
    url = _postgres_url()
    if url:
        return normalise_database_url(url)
    return f"sqlite:///{tmp_root / 'test.db'}"


def make_env(database_url: str, instance: Path, **extra: str) -> dict[str, str]:
    """The complete environment a test gateway runs with (in-process or under gunicorn)."""
    env = {
        "GATEWAY_MODE": "development",
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret-key-" + "x" * 32,
        "ENCRYPTION_KEY": ENCRYPTION_KEY,
        "KEY_PEPPER": PEPPER,
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "INSTANCE_PATH": str(instance),
        "SESSION_COOKIE_SECURE": "false",
        "BLOCK_PRIVATE_UPSTREAMS": "false",
        "ADMIN_AUTH_FAILURES_PER_MINUTE": "1000",
        # Gateways of different test modules share one database and would compete for
        # the prober's lease; only the tests about probing turn it on.
        "PROBE_INTERVAL_SECONDS": "0",
        # Likewise the reservation sweep's lease: tests/limits/test_sweep_background.py turns it on.
        "SWEEP_INTERVAL_SECONDS": "0",
        # Most tests change something and use it on the next request, possibly on
        # another worker; tests/proxy/test_cache_refresh.py covers the default interval.
        "CACHE_REFRESH_SECONDS": "0",
        # A test session keeps several gateways (and their pooled connections) alive at
        # once; fewer kept-open connections per worker stay under PostgreSQL's default
        # max_connections (100). Bursts can still open DB_MAX_OVERFLOW more.
        "DB_POOL_SIZE": "10",
        "DB_MAX_OVERFLOW": "20",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def migrated(database_url: str, tmp_root: Path) -> str:
    """Apply the real migrations once per session (``flask db upgrade``)."""
    from flask_migrate import upgrade

    app = create_app(env=make_env(database_url, tmp_root / "instance"))
    with app.app_context():
        from gateway.extensions import db

        if database_url.startswith("postgresql"):
            with db.engine.begin() as conn:  # a stale schema from an aborted run must not leak in
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        upgrade()
    return database_url


def reset_database(url: str) -> None:
    """Empty every table and restore the default tiers the migration seeds."""
    engine = create_engine(url)
    with engine.begin() as conn:
        if url.startswith("postgresql"):
            conn.execute(text(f"TRUNCATE {', '.join(RESET_TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in RESET_TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text(
            "INSERT INTO tiers (name, key_prefix, rpm, default_quota_period, created_at) VALUES "
            "('dev', 'sk-dev-', 30, 'monthly', CURRENT_TIMESTAMP), "
            "('pro', 'sk-pro-', 120, 'monthly', CURRENT_TIMESTAMP)"
        ))
        # Generations only ever grow, even across a reset, so a gunicorn gateway that outlives
        # this reset (a separate process: its worker state is out of reach) can never mistake
        # the new database for the one it cached. In-process apps need no such trick: each
        # app has its own WorkerState, and tests can call its reset().
        seed = time.time_ns() // 1000
        conn.execute(text("INSERT INTO generations (name, value) VALUES ('auth', :v), ('routing', :v)"), {"v": seed})
    engine.dispose()


@pytest.fixture
def env(migrated: str, tmp_path: Path) -> dict[str, str]:
    reset_database(migrated)
    return make_env(migrated, tmp_path / "instance")


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[Any]:
    application = create_app(env=env)
    application.config["TESTING"] = True
    application.config["WTF_CSRF_ENABLED"] = True
    yield application
    with application.app_context():
        from gateway.extensions import db

        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"X-Admin-Key": ADMIN_TOKEN}
