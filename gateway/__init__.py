"""KeyGate: a self-hosted API-key gateway for LLM providers and plain HTTP backends.

``create_app`` assembles the application (config, extensions, blueprints, error
handlers, CLI) and does nothing else: no database writes, no network calls.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask

from .config import PROJECT_ROOT, load_config

__version__ = "0.1.0"


def create_app(overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
               check_database: bool = False) -> Flask:
    """Build the app from the environment (or ``env``), then apply ``overrides``.

    Tests pass ``env`` with exactly the settings they want, so the process
    environment never leaks into them. ``check_database`` runs the start-up database
    probe (unsupported scheme, unreachable PostgreSQL, unwritable SQLite folder) so a
    wrong DATABASE_URL stops start-up; the entry point (``wsgi.py``: gunicorn workers
    and the ``flask`` CLI) asks for it, and the gunicorn master runs it in ``on_starting``.
    """
    settings = load_config(env, check_database=check_database)
    if overrides:
        settings.update(overrides)
    app = Flask(
        __name__,
        instance_path=str(settings["INSTANCE_PATH"]),
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.config.update(settings)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=settings["DATABASE_URL"],
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(settings["DATABASE_URL"], settings["DB_POOL_SIZE"],
                                                  settings["DB_MAX_OVERFLOW"]),
        MAX_CONTENT_LENGTH=None,  # the proxy streams bodies and enforces MAX_BODY_BYTES itself
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=settings["SESSION_COOKIE_SECURE"],
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        JSON_SORT_KEYS=False,
        VERSION=__version__,
    )
    logging.getLogger("gateway").setLevel(app.config["LOG_LEVEL"])

    from . import extensions, models, worker_state  # noqa: F401  (models registers the tables)
    from .secrets_box import SecretBox

    extensions.db.init_app(app)
    extensions.migrate.init_app(app, extensions.db, directory=str(PROJECT_ROOT / "migrations"))
    extensions.csrf.init_app(app)
    app.extensions["keygate.box"] = SecretBox(app.config["ENCRYPTION_KEYS"])
    worker_state.install(app)  # before the limiter: its memcached clients live there
    from .body_deadline import BodyDeadline

    # Inside ProxyFix (wrapped first), so it counts by the trusted client address.
    app.wsgi_app = BodyDeadline(app.wsgi_app, app)  # type: ignore[method-assign]
    if app.config["TRUSTED_PROXY_COUNT"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = app.config["TRUSTED_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=0)  # type: ignore[method-assign]
    if app.config["DATABASE_URL"].startswith("sqlite"):
        _sqlite_pragmas(app)
    else:
        from . import pg_gevent

        pg_gevent.install()  # only under gevent (a gunicorn worker); see the module
        _ping_when_idle(app)

    from . import forwarding_check, limiter, portal, requestid, security_headers
    from .admin_api import bp as admin_api_bp
    from .ops import bp as ops_bp
    from .proxy import bp as proxy_bp
    from .usage import bp as usage_bp

    limiter.init_app(app)
    requestid.init_app(app)
    forwarding_check.init_app(app)
    security_headers.init_app(app)
    portal.init_app(app)
    app.register_blueprint(ops_bp)
    app.register_blueprint(admin_api_bp)
    app.register_blueprint(proxy_bp)
    app.register_blueprint(usage_bp)
    app.register_blueprint(portal.bp)
    # Header-token and user-key surfaces: no cookies, so no CSRF.
    extensions.csrf.exempt(admin_api_bp)
    extensions.csrf.exempt(proxy_bp)
    extensions.csrf.exempt(usage_bp)

    from .cli import register_cli
    from .http_errors import register_error_handlers

    register_error_handlers(app)
    register_cli(app)
    from . import observability

    observability.init_app(app)  # after the error handlers: it wraps the ApiError one
    return app


def _engine_options(url: str, pool_size: int = 20, max_overflow: int = 10) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # One connection per greenlet/thread; a busy timeout so short write locks wait.
        # Short on purpose: SQLite's busy wait blocks the whole gevent worker (every
        # stream on it), so a write lock held elsewhere must turn into a quick 503, not
        # a 15 s freeze; the record step retries on its own schedule.
        return {"connect_args": {"timeout": 2, "check_same_thread": False}}
    # No pre-ping on every checkout (a round trip each, two per request): connections
    # idle for a while are pinged instead (``_ping_when_idle``), and the pool is LIFO so
    # a busy worker keeps reusing its warm connections.
    # Bounded waits: a server that accepts but never answers must become a 503, not a hang.
    # The pool keeps DB_POOL_SIZE connections per worker; overflow connections are opened
    # for bursts and closed when returned, and each one costs a PostgreSQL backend fork:
    # with 10 kept and ~25 requests in flight per worker, that churn cost more CPU than the
    # requests themselves (bench: c=50 ran slower than c=10 until the pool was sized up).
    return {"pool_pre_ping": False, "pool_use_lifo": True, "pool_size": pool_size, "max_overflow": max_overflow,
            "pool_recycle": 1800, "pool_timeout": 10,
            "connect_args": {"connect_timeout": 5, "options": "-c statement_timeout=15000"}}


PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(app: Flask) -> None:
    """Pessimistic disconnect handling for connections that sat idle: a pooled connection
    unused for PING_AFTER_IDLE_SECONDS is pinged when checked out, and a dead one is
    replaced before anyone uses it (after a database restart every idle connection is
    dead). A connection in constant use is not pinged: if the server dies under it,
    the statement fails, the failure is a disconnect, and the pool is emptied (SQLAlchemy
    for ORM/Core statements, ``proxy.pg_statements.run`` for the hot path).
    Pinging every checkout cost a database round trip per statement (bench/PROFILE.md)."""
    from sqlalchemy import event
    from sqlalchemy.exc import DisconnectionError

    from .extensions import db

    with app.app_context():
        engine = db.engine

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return  # fresh from connect, or in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise DisconnectionError("idle connection failed its ping") from error
        if not alive:
            raise DisconnectionError("idle connection failed its ping")


def _sqlite_pragmas(app: Flask) -> None:
    """WAL lets readers run beside the single writer (see docs/architecture.md, SQLite and
    PostgreSQL under gevent)."""
    from sqlalchemy import event

    from .extensions import db

    with app.app_context():
        engine = db.engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
