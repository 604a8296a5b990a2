"""Admin portal (``/admin``): Flask-Login sessions, Flask-WTF forms with CSRF, and the
same service functions the admin JSON API calls, so every rule lives in one place."""
from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("portal", __name__, url_prefix="/admin")


def init_app(app: Flask) -> None:
    """Bind Flask-Login and the sign-in throttles. Called by create_app."""
    from . import auth

    auth.init_app(app)


from . import (  # noqa: E402,F401
    errors,
    routes_auth,
    routes_backends,
    routes_dashboard,
    routes_keys,
    routes_logs,
    routes_tiers,
    routes_users,
)
