"""Public usage surface: the ``/usage`` page and ``GET /api/usage``."""
from flask import Blueprint

bp = Blueprint("usage", __name__)

from . import routes  # noqa: E402,F401  (registers the views on bp)
