"""The proxy surface: OpenAI- and Anthropic-compatible ``/v1`` routes and the generic
HTTP pass-through. Each step of the request flow (DESIGN.md) has its own module:
authenticate, rate_checks, quota, routing, forward, relay, usage_parser, record."""
from flask import Blueprint

bp = Blueprint("proxy", __name__)

from . import passthrough, routes  # noqa: E402,F401
