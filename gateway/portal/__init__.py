"""Admin portal (``/admin``): Flask-Login sessions, Flask-WTF forms with CSRF."""
from flask import Blueprint

bp = Blueprint("portal", __name__, url_prefix="/admin")


def init_app(app) -> None:  # type: ignore[no-untyped-def]
    """Bind portal-only extensions (Flask-Login). Called by create_app."""
