"""Admin JSON API (``/api/admin``) for scripts and automation; its paths and fields are a
public contract (see docs/architecture.md, Admin API contract).
Authenticated by token header only, never by cookie, so it is exempt from CSRF."""
from flask import Blueprint

bp = Blueprint("admin_api", __name__, url_prefix="/api/admin")

from . import auth, routes_keys, routes_reports, routes_resources  # noqa: E402,F401
