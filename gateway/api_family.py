"""Which API family a path belongs to - one rule for the error format, the metrics
label and the request log line.

``route_family`` names the surface (``openai``, ``anthropic``, ``gemini``,
``passthrough``, ``admin_api``, ``portal``, ``usage``, ``ops``, ``other``);
``error_format`` is the error shape its clients parse (``errors.render``): the OpenAI,
Anthropic and Gemini routes answer in their SDKs' shapes, everything else in the
generic one. The pass-through
lives under the configurable PROXY_PREFIX, so callers pass the app's prefix; a
hard-coded ``/proxy`` would file a deployment's pass-through traffic under "other".
See docs/architecture.md, Error contract.
"""
from __future__ import annotations

import re

# The Gemini API's stable version shares ``/v1/`` with OpenAI's; its model methods are
# told apart by their ``models/{model}:{method}`` form (an OpenAI fine-tuned model id
# has colons too, but never ends in one of these method names).
GEMINI_V1_METHOD = re.compile(
    r"/v1/models/[^/]+:(generateContent|streamGenerateContent|countTokens|embedContent|batchEmbedContents)")


def route_family(path: str, proxy_prefix: str) -> str:
    """The family of ``path`` for metrics and logs (bounded label values)."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1beta/") or path == "/v1beta" or GEMINI_V1_METHOD.fullmatch(path):
        return "gemini"
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith(proxy_prefix + "/"):
        return "passthrough"
    if path.startswith("/api/admin"):
        return "admin_api"
    if path.startswith("/admin"):
        return "portal"
    if path.startswith(("/usage", "/api/usage")):
        return "usage"
    if path in ("/health", "/ready", "/metrics"):
        return "ops"
    return "other"


def error_format(family: str) -> str:
    """The error shape for a route family: ``openai``, ``anthropic``, ``gemini`` or ``generic``."""
    return family if family in ("openai", "anthropic", "gemini") else "generic"
