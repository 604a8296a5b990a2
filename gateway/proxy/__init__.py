"""The proxy surface: OpenAI- and Anthropic-compatible ``/v1`` routes, the Gemini API
(``/v1beta``, ``gemini_api``) and the generic HTTP pass-through. Each step of the
request flow (listed in order in ``routes``; see
docs/architecture.md, Request flow) has its own module: rate_checks, snapshot,
authenticate, inbound, routing, quota, pool, forward, relay, usage_parser, accounting."""
from flask import Blueprint

bp = Blueprint("proxy", __name__)

from . import gemini_api, passthrough, responses_api, routes  # noqa: E402,F401
