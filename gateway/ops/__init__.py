"""Ops surface: ``/health`` (liveness plus pool stats), ``/ready`` (dependencies) and
``/metrics`` (Prometheus)."""
from flask import Blueprint

bp = Blueprint("ops", __name__)

from . import metrics_endpoint, routes  # noqa: E402,F401
