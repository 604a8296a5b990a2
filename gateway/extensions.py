"""Flask extensions, created here unbound and bound once in ``create_app``."""
from __future__ import annotations

from typing import ClassVar

from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import Table
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """The typed declarative base every model in ``gateway.models`` subclasses.

    Flask-SQLAlchemy builds ``db.Model`` from this class with the same registry and
    metadata, so ``db.metadata`` (what migrations and ``tests/test_migrations.py``
    compare against) holds every model's table. Models subclass ``Base`` rather than
    ``db.Model`` because a type checker cannot see through an attribute of an instance
    used as a base class; nothing here uses what ``db.Model`` adds (``Model.query``,
    bind keys, automatic table names): every model names its table, and queries go
    through ``db.session``.
    """

    # Every model maps one Table (none maps a join or a select), and the hot-path
    # statements are built on those tables; SQLAlchemy types the attribute as the
    # wider FromClause, which insert()/update()/delete() do not accept.
    __table__: ClassVar[Table]


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
