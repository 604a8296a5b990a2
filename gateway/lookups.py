"""Rows by id, for the admin API and the portal alike.

Every id column is a 32-bit INTEGER. PostgreSQL's driver binds the value as an INTEGER
too, so a larger number in a URL (``/admin/users/2147483648``) fails in the database
and would surface as a 500; SQLite simply finds nothing. Checking the range first makes
both databases answer "not found" (see docs/architecture.md, Error contract).
"""
from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import ColumnElement, false
from werkzeug.exceptions import NotFound

from .extensions import db

T = TypeVar("T")
MAX_ID = 2**31 - 1


def valid_id(ident: int) -> bool:
    return 0 < ident <= MAX_ID


class RecordNotFound(NotFound):
    """A 404 naming what was missing. A NotFound, so the portal renders its HTML 404
    page; the admin API turns it into its JSON error body."""

    def __init__(self, model: type[Any], ident: int) -> None:
        super().__init__(f"No {model.__name__.lower()} with id {ident}")


def get_or_404(model: type[T], ident: int) -> T:
    obj = db.session.get(model, ident) if valid_id(ident) else None
    if obj is None:
        raise RecordNotFound(model, ident)
    return obj


def id_equals(column: Any, ident: int) -> ColumnElement[bool]:
    """``column == ident`` for a list filter; an id no row can have matches nothing
    (instead of failing on PostgreSQL)."""
    return column == ident if valid_id(ident) else false()
