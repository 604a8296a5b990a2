"""Observability: Prometheus metrics (``metrics``), JSON logs with redaction (``logs``)
and the per-request events that feed both (``events``).

``init_app`` is called once by ``create_app``, after the error handlers are registered
(the rejection counter wraps the ApiError handler).
"""
from __future__ import annotations

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.exc import IntegrityError

from . import events, logs, metrics


def _on_database_error(context: ExceptionContext) -> None:
    """Every engine's DBAPI errors, connection failures included; constraint violations
    are answers, not outages, so they are not counted."""
    error = context.sqlalchemy_exception or context.original_exception
    if isinstance(error, IntegrityError):
        return
    metrics.DATABASE_ERRORS.labels(type(error).__name__[:48]).inc()


def init_app(app: Flask) -> None:
    logs.configure_logging(app)
    events.init_app(app)
    if not event.contains(Engine, "handle_error", _on_database_error):
        event.listen(Engine, "handle_error", _on_database_error)
