"""Routing, the request-flow step after reading the body: which backends may serve this
model for this caller. I/O-free: the view passes the backends of the worker's snapshot.

A backend serves a model when the model is in its list, matches one of its ``*``
patterns, or is one of its aliases (a public name rewritten to the provider's model).
``GET /v1/models`` is built from the same function, so listing and routing agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..errors import ApiError
from .authenticate import Caller
from .snapshot import BackendInfo


@dataclass(frozen=True)
class Route:
    backend_id: int
    backend_name: str
    kind: str
    base_url: str
    weight: int
    upstream_model: str | None  # the model name sent upstream (alias rewritten)
    connect_timeout: float | None
    read_timeout: float | None
    prices: dict
    relay_cookies: bool = False  # pass-through only (``passthrough``)


def _matches(patterns: list[str] | tuple[str, ...], value: str) -> bool:
    return any(p == value or ("*" in p or "?" in p) and fnmatchcase(value, p) for p in patterns)


def backend_serves(backend: BackendInfo, model: str) -> str | None:
    """The upstream model name when ``backend`` serves ``model``, else None."""
    aliases = backend.model_aliases or {}
    if model in aliases:
        return str(aliases[model])
    if _matches(backend.models or [], model):
        return model
    return None


def model_allowed(caller: Caller, model: str) -> bool:
    for allowed in (caller.allowed_models, caller.key_allowed_models):
        if allowed and not _matches(allowed, model):
            return False
    return True


def backend_allowed(caller: Caller, backend_name: str) -> bool:
    for allowed in (caller.allowed_backends, caller.key_allowed_backends):
        if allowed and backend_name not in allowed:
            return False
    return True


def enabled_backends(backends: list[BackendInfo], kinds: tuple[str, ...]) -> list[BackendInfo]:
    """Enabled backends of ``kinds`` among ``backends``."""
    return [b for b in backends if b.enabled and b.kind in kinds]


def routes_for(backends: list[BackendInfo], caller: Caller, model: str, kinds: tuple[str, ...]) -> list[Route]:
    """Backends that may serve ``model`` to ``caller``; raises 403/404 in the caller's format."""
    if not model_allowed(caller, model):
        raise ApiError(403, f"This key may not use the model '{model}'", code="model_not_allowed", param="model")
    serving: list[Route] = []
    refused = False
    for backend in enabled_backends(backends, kinds):
        upstream_model = backend_serves(backend, model)
        if upstream_model is None:
            continue
        if not backend_allowed(caller, backend.name):
            refused = True
            continue
        serving.append(_route(backend, upstream_model))
    if not serving:
        if refused:
            raise ApiError(403, f"This key may not use the backends that serve '{model}'",
                           code="backend_not_allowed", param="model")
        raise ApiError(404, f"The model '{model}' does not exist or is not served by this gateway",
                       code="model_not_found", param="model")
    return serving


def passthrough_route(backends: list[BackendInfo], caller: Caller, backend_name: str) -> Route:
    backend = next((b for b in enabled_backends(backends, ("http",)) if b.name == backend_name), None)
    if backend is None:
        raise ApiError(404, f"No HTTP backend named '{backend_name[:64]}'", code="backend_not_found")
    if not backend_allowed(caller, backend.name):
        raise ApiError(403, f"This key may not use the backend '{backend.name}'", code="backend_not_allowed")
    return _route(backend, None)


def backend_route(backends: list[BackendInfo], caller: Caller, backend_id: int,
                  kinds: tuple[str, ...]) -> Route | None:
    """The route to one backend by id (a stored response's), when it is enabled, of
    ``kinds`` and allowed for ``caller``; else None."""
    backend = next((b for b in enabled_backends(backends, kinds) if b.id == backend_id), None)
    if backend is None or not backend_allowed(caller, backend.name):
        return None
    return _route(backend, None)


def listed_models(backends: list[BackendInfo], caller: Caller,
                  kinds: tuple[str, ...] = ("openai", "anthropic")) -> list[tuple[str, str]]:
    """(model id, owning backend) pairs this caller may use on backends of ``kinds``, for
    ``GET /v1/models`` (and ``GET /v1beta/models`` with the Gemini kind). Patterns
    cannot be listed, so only concrete names and aliases appear."""
    seen: dict[str, str] = {}
    for backend in enabled_backends(backends, kinds):
        if not backend_allowed(caller, backend.name):
            continue
        names = [m for m in (backend.models or []) if "*" not in m and "?" not in m]
        names += list((backend.model_aliases or {}).keys())
        for name in names:
            if name not in seen and model_allowed(caller, name):
                seen[name] = backend.name
    return sorted(seen.items())


def _route(backend: BackendInfo, upstream_model: str | None) -> Route:
    return Route(backend_id=backend.id, backend_name=backend.name, kind=backend.kind,
                 base_url=backend.base_url.rstrip("/"), weight=max(0, backend.weight),
                 upstream_model=upstream_model, connect_timeout=backend.connect_timeout,
                 read_timeout=backend.read_timeout, prices=dict(backend.prices or {}),
                 relay_cookies=backend.relay_cookies)
