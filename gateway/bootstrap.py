"""First-run setup: the first admin account and backends imported from the
environment. Idempotent, so every start can run it safely. Nothing here commits: the
``bootstrap`` / ``import-backends`` command (or the demo) commits the whole setup once,
so a failure leaves nothing half-imported."""
from __future__ import annotations

import json
import logging
from typing import Any

from flask import current_app
from sqlalchemy import func, select

from .extensions import db
from .models import Admin, Backend
from .services import admins
from .services import backends as backend_service
from .services.validation import ValidationError, parse_body

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_URL = "https://api.anthropic.com"

log = logging.getLogger("gateway.bootstrap")


def ensure_first_admin() -> Admin | None:
    """Create the first admin from ADMIN_USERNAME/ADMIN_PASSWORD when no admin exists."""
    password = current_app.config.get("ADMIN_PASSWORD")
    if not password or admins.count():
        return None
    return admins.create(current_app.config["ADMIN_USERNAME"], password)


def backends_from_env() -> list[dict[str, Any]]:
    """Backend specs from BACKENDS_JSON and the OPENAI_/ANTHROPIC_ shortcuts."""
    config = current_app.config
    specs: list[dict[str, Any]] = []
    if config.get("BACKENDS_JSON"):
        try:
            loaded = json.loads(config["BACKENDS_JSON"])
        except json.JSONDecodeError as exc:
            raise ValidationError({"BACKENDS_JSON": f"is not JSON ({exc.msg})"}) from None
        if not isinstance(loaded, list):
            raise ValidationError({"BACKENDS_JSON": "must be a JSON list of backends"})
        specs.extend(loaded)
    # Keys without a base URL mean the provider's official endpoint, not "import nothing".
    if config.get("OPENAI_BASE_URL") or config.get("OPENAI_API_KEYS"):
        specs.append({"name": "openai", "kind": "openai",
                      "base_url": config.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL,
                      "models": ["*"], "keys": config.get("OPENAI_API_KEYS") or []})
    if config.get("ANTHROPIC_BASE_URL") or config.get("ANTHROPIC_API_KEYS"):
        specs.append({"name": "anthropic", "kind": "anthropic",
                      "base_url": config.get("ANTHROPIC_BASE_URL") or ANTHROPIC_DEFAULT_URL,
                      "models": ["claude-*"], "keys": config.get("ANTHROPIC_API_KEYS") or []})
    return specs


def _checked_specs() -> list[tuple[dict[str, Any], list[Any]]]:
    """Validate every spec before writing any, so a typo in the third backend does not
    leave the first two imported and block a corrected re-run (which imports only
    into an empty table)."""
    checked: list[tuple[dict[str, Any], list[Any]]] = []
    seen: set[str] = set()
    for index, spec in enumerate(backends_from_env(), start=1):
        if not isinstance(spec, dict):
            raise ValidationError({"BACKENDS_JSON": f"entry {index} must be an object"})
        spec = dict(spec)
        keys = spec.pop("keys", None) or []
        if not isinstance(keys, list):
            raise ValidationError({"BACKENDS_JSON": f"entry {index}: keys must be a list of secrets"})
        try:
            parse_body(spec, backend_service.BACKEND_FIELDS, partial=False, required=("name", "kind", "base_url"))
            for secret in keys:
                parse_body({"secret": secret}, backend_service.KEY_FIELDS, partial=False, required=("secret",))
        except ValidationError as error:
            raise ValidationError({f"backend {spec.get('name', index)} {field}": message
                                   for field, message in error.errors.items()}) from None
        if spec["name"] in seen:
            raise ValidationError({"BACKENDS_JSON": f"backend name {spec['name']!r} appears twice"})
        seen.add(spec["name"])
        checked.append((spec, keys))
    return checked


def import_backends_from_env(actor: str = "bootstrap") -> int:
    """Import backends and their keys when the database holds none; returns how many."""
    if db.session.scalar(select(func.count()).select_from(Backend)):
        return 0
    count = 0
    for spec, keys in _checked_specs():
        backend = backend_service.create_backend(spec, actor, None)
        for index, secret in enumerate(keys, start=1):
            backend_service.add_key(backend, {"secret": secret, "label": f"env-{index}"}, actor, None)
        count += 1
    if count:
        log.info("imported %d backend(s) from the environment", count)
    return count
