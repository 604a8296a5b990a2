"""The migrations are the schema: they match the models exactly and seed the default
tiers, on SQLite and on PostgreSQL (whichever database this session runs on)."""
import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from gateway import create_app
from gateway.extensions import db
from tests.conftest import make_env


def test_migrations_match_the_models_with_no_autogenerate_diff(migrated, tmp_path):
    app = create_app(env=make_env(migrated, tmp_path / "instance"))
    with app.app_context():
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, db.metadata)
        db.engine.dispose()

    assert diff == []


@pytest.fixture
def fresh_database_url(migrated, tmp_path):
    """An empty database of the session's kind: a new SQLite file, or a new PostgreSQL
    database next to the session's one (dropped afterwards)."""
    if not migrated.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"kg_fresh_{uuid.uuid4().hex[:10]}"
    admin = create_engine(migrated, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(migrated).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_upgrade_seeds_the_default_tiers_and_downgrade_removes_every_table(fresh_database_url, tmp_path: Path):
    from flask_migrate import downgrade, upgrade

    app = create_app(env=make_env(fresh_database_url, tmp_path / "instance"))
    with app.app_context():
        upgrade()
        tiers = db.session.execute(text("SELECT name, key_prefix, rpm FROM tiers ORDER BY name")).all()
        tables = set(inspect(db.engine).get_table_names())
        db.session.remove()
        downgrade(revision="base")
        after_downgrade = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
        upgrade()
        reseeded = db.session.execute(text("SELECT count(*) FROM tiers")).scalar()
        db.session.remove()
        db.engine.dispose()

    assert [tuple(row) for row in tiers] == [("dev", "sk-dev-", 30), ("pro", "sk-pro-", 120)]
    assert {"tiers", "users", "api_keys", "usage_counters", "backends", "upstream_keys", "request_logs",
            "audit_log", "admins"} <= tables
    assert after_downgrade == set()
    assert reseeded == 2
