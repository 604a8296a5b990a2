"""Ops surface: ``/health`` (liveness plus pool stats) and ``/ready`` (dependencies)."""
from flask import Blueprint

bp = Blueprint("ops", __name__)

from . import routes  # noqa: E402,F401
