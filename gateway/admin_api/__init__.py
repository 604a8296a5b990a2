"""Admin JSON API (``/api/admin``): the contract in DESIGN.md, for scripts and automation.
Authenticated by token header only, never by cookie, so it is exempt from CSRF."""
from flask import Blueprint

bp = Blueprint("admin_api", __name__, url_prefix="/api/admin")

from . import auth, routes_keys, routes_reports, routes_resources  # noqa: E402,F401
