"""Upstream error bodies, cleaned: the provider's message is kept (it helps the caller
fix a bad request) but anything that could carry our upstream secret is removed: the
secret that was sent, by value (the one rule, ``scrub``), then anything key-shaped."""
from __future__ import annotations

import json
import re

from ..errors import ApiError
from .scrub import scrub_text

# Provider-style keys: sk-..., sk-ant-..., long bearer-looking tokens.
_KEYISH = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|[A-Za-z0-9_\-]{32,})")
MAX_MESSAGE = 500


def _scrub(text: str, secret: str) -> str:
    return _KEYISH.sub("[redacted]", scrub_text(text, secret))


def clean_error(status: int, content: bytes, secret: str) -> ApiError:
    message = ""
    code = None
    try:
        body = json.loads(content.decode("utf-8", "replace"))
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            code = error.get("code") if isinstance(error.get("code"), str) else error.get("type")
        elif isinstance(error, str):
            message = error
        elif isinstance(body.get("message"), str):
            message = body["message"]
    if not message:
        message = f"The upstream provider answered HTTP {status}"
    message = _scrub(message, secret)[:MAX_MESSAGE]
    code = _scrub(str(code), secret)[:64] if code else None
    return ApiError(status, message, code=code)
