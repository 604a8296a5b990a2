"""Helpers shared by the portal views: pagination, the acting admin, and
turning a service ValidationError into inline form errors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import request
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import Select, func, select

from ..extensions import db
from ..limiter import client_ip
from ..services.validation import ValidationError

PAGE_SIZE = 25


@dataclass
class Page:
    items: list[Any]
    total: int
    page: int
    pages: int

    def args_for(self, number: int) -> dict[str, Any]:
        """The current query string with ``page`` replaced, for pagination links."""
        args: dict[str, Any] = {k: v for k, v in request.args.items() if k != "page"}
        args["page"] = number
        return args


def paginate(query: Select, page_size: int = PAGE_SIZE) -> Page:
    try:
        page = max(1, int(request.args.get("page", 1)))
    except ValueError:
        page = 1
    total = int(db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0)
    items = list(db.session.scalars(query.limit(page_size).offset((page - 1) * page_size)).unique())
    return Page(items, total, page, max(1, -(-total // page_size)))


def actor() -> str:
    return f"admin:{current_user.username}"


def ip() -> str:
    return client_ip()


def show_errors(form: FlaskForm, error: ValidationError) -> None:
    """Attach each service error to its form field; the rest become form-level errors."""
    form.form_errors = list(getattr(form, "form_errors", []))
    for name, message in error.errors.items():
        field = form._fields.get(name)
        if field is not None:
            field.errors = list(field.errors) + [message]
        else:
            form.form_errors.append(f"{name}: {message}")
