"""Public usage surface: the ``/usage`` page and ``GET /api/usage``."""
from flask import Blueprint

bp = Blueprint("usage", __name__)
