"""Logging: one JSON object per line (``LOG_FORMAT=json``, the default) or plain text for
development, with a redaction filter on every handler as the last line of defence.

Code never logs a key on purpose; the filter is there for the day someone does by
accident (an exception message that quotes a header, a URL with ``?key=``), because a
leaked key in a log file is a leaked key.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from flask import Flask

REDACTED = "[REDACTED]"
# sk-..., sk-ant-..., sk-dev-<random>: every provider key and our own user keys (a display
# prefix such as "sk-pro-gRXg" is shorter and stays readable).
_SECRET_PATTERNS = [
    re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"(?i)(x-api-key|x-admin-key|api[_-]?key|authorization)(\W{1,4})[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"(?i)([?&](?:key|api_key|token|access_token|secret|password)=)[^&\s\"']+"),
]
# Any other long random-looking token (mixed case and digits, 32+ characters): a Fernet
# key, an admin token, a key with a custom tier prefix. Hex request ids do not match.
_LONG_TOKEN = re.compile(r"[A-Za-z0-9_\-]{32,}")
_HANDLER_FLAG = "_keygate_handler"


def redact(text: str) -> str:
    text = _SECRET_PATTERNS[0].sub(REDACTED, text)
    text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _SECRET_PATTERNS[3].sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _LONG_TOKEN.sub(_redact_random, text)


def _redact_random(match: re.Match[str]) -> str:
    token = match.group(0)
    if any(c.isupper() for c in token) and any(c.islower() for c in token) and any(c.isdigit() for c in token):
        return REDACTED
    return token


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


class RedactionFilter(logging.Filter):
    """Rewrites the record in place: message (with its arguments), structured fields and
    the exception text all pass through ``redact``. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = _redact_value(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_text or record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return line


def configure_logging(app: Flask) -> None:
    """Install one stderr handler on the root logger (replacing ours from an earlier
    ``create_app`` in the same process) and put the redaction filter on every handler
    gunicorn installed too, its access log included."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_FLAG, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_FLAG, True)
    handler.setFormatter(JsonFormatter() if app.config["LOG_FORMAT"] == "json" else TextFormatter())
    handler.addFilter(RedactionFilter())
    root.addHandler(handler)
    if root.level == logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(app.config["LOG_LEVEL"])
    for name in ("gunicorn.error", "gunicorn.access"):
        for existing in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactionFilter) for f in existing.filters):
                existing.addFilter(RedactionFilter())
    logging.getLogger("gateway").setLevel(app.config["LOG_LEVEL"])
