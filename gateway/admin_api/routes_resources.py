"""Tiers, users, backends and upstream keys."""
from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request
from sqlalchemy import select

from ..errors import ApiError, render
from ..lookups import RecordNotFound, get_or_404, id_equals
from ..models import Backend, Tier, UpstreamKey, User
from ..services import backends as backend_service
from ..services import tiers as tier_service
from ..services import users as user_service
from ..services.validation import ValidationError
from ..transaction import committed
from . import bp
from .common import actor, body, ip, paginate, validation_response


@bp.errorhandler(ValidationError)
def _invalid(error: ValidationError) -> Response:
    return validation_response(error)


@bp.errorhandler(RecordNotFound)
def _not_found(error: RecordNotFound) -> Response:
    return render("generic", ApiError(404, str(error.description)))


def created(payload: dict[str, Any]) -> Response:
    response = jsonify(payload)
    response.status_code = 201
    return response


# --- tiers -------------------------------------------------------------------------
@bp.get("/tiers")
def list_tiers() -> Response:
    return paginate(select(Tier).order_by(Tier.id.desc()), tier_service.to_dict)


@bp.post("/tiers")
def create_tier() -> Response:
    with committed():
        tier = tier_service.create(body(), actor(), ip())
    return created(tier_service.to_dict(tier))


@bp.get("/tiers/<int:tier_id>")
def get_tier(tier_id: int) -> Response:
    return jsonify(tier_service.to_dict(get_or_404(Tier, tier_id)))


@bp.patch("/tiers/<int:tier_id>")
def update_tier(tier_id: int) -> Response:
    tier = get_or_404(Tier, tier_id)
    with committed():
        tier_service.update(tier, body(), actor(), ip())
    return jsonify(tier_service.to_dict(tier))


@bp.delete("/tiers/<int:tier_id>")
def delete_tier(tier_id: int) -> Response:
    with committed():
        tier_service.delete(get_or_404(Tier, tier_id), actor(), ip())
    return jsonify({"deleted": True, "id": tier_id})


# --- users -------------------------------------------------------------------------
@bp.get("/users")
def list_users() -> Response:
    query = user_service.search(request.args.get("q"), request.args.get("status"))
    return paginate(query, user_service.to_dict)


@bp.post("/users")
def create_user() -> Response:
    with committed():
        user = user_service.create(body(), actor(), ip())
    return created(user_service.to_dict(user))


@bp.get("/users/<int:user_id>")
def get_user(user_id: int) -> Response:
    return jsonify(user_service.to_dict(get_or_404(User, user_id)))


@bp.patch("/users/<int:user_id>")
def update_user(user_id: int) -> Response:
    user = get_or_404(User, user_id)
    with committed():
        user_service.update(user, body(), actor(), ip())
    return jsonify(user_service.to_dict(user))


@bp.delete("/users/<int:user_id>")
def delete_user(user_id: int) -> Response:
    user = get_or_404(User, user_id)
    with committed():
        user_service.delete(user, actor(), ip())
    return jsonify(user_service.to_dict(user))


# --- backends and upstream keys ----------------------------------------------------
@bp.get("/backends")
def list_backends() -> Response:
    return paginate(select(Backend).order_by(Backend.id.desc()), backend_service.backend_to_dict)


@bp.post("/backends")
def create_backend() -> Response:
    with committed():
        backend = backend_service.create_backend(body(), actor(), ip())
    return created(backend_service.backend_to_dict(backend))


@bp.get("/backends/<int:backend_id>")
def get_backend(backend_id: int) -> Response:
    return jsonify(backend_service.backend_to_dict(get_or_404(Backend, backend_id)))


@bp.patch("/backends/<int:backend_id>")
def update_backend(backend_id: int) -> Response:
    backend = get_or_404(Backend, backend_id)
    with committed():
        backend_service.update_backend(backend, body(), actor(), ip())
    return jsonify(backend_service.backend_to_dict(backend))


@bp.delete("/backends/<int:backend_id>")
def delete_backend(backend_id: int) -> Response:
    with committed():
        backend_service.delete_backend(get_or_404(Backend, backend_id), actor(), ip())
    return jsonify({"deleted": True, "id": backend_id})


@bp.post("/backends/<int:backend_id>/keys")
def add_upstream_key(backend_id: int) -> Response:
    backend = get_or_404(Backend, backend_id)
    with committed():
        key = backend_service.add_key(backend, body(), actor(), ip())
    return created(backend_service.key_to_dict(key))


@bp.get("/upstream-keys")
def list_upstream_keys() -> Response:
    query = select(UpstreamKey).order_by(UpstreamKey.id.desc())
    backend_id = request.args.get("backend_id", type=int)
    if backend_id:
        query = query.where(id_equals(UpstreamKey.backend_id, backend_id))
    state = request.args.get("state")
    if state:
        query = query.where(UpstreamKey.state == state)
    return paginate(query, backend_service.key_to_dict)


@bp.get("/upstream-keys/<int:key_id>")
def get_upstream_key(key_id: int) -> Response:
    return jsonify(backend_service.key_to_dict(get_or_404(UpstreamKey, key_id)))


@bp.patch("/upstream-keys/<int:key_id>")
def update_upstream_key(key_id: int) -> Response:
    key = get_or_404(UpstreamKey, key_id)
    with committed():
        backend_service.update_key(key, body(), actor(), ip())
    return jsonify(backend_service.key_to_dict(key))


@bp.delete("/upstream-keys/<int:key_id>")
def delete_upstream_key(key_id: int) -> Response:
    with committed():
        backend_service.delete_key(get_or_404(UpstreamKey, key_id), actor(), ip())
    return jsonify({"deleted": True, "id": key_id})


@bp.post("/upstream-keys/<int:key_id>/reset")
def reset_upstream_key(key_id: int) -> Response:
    key = get_or_404(UpstreamKey, key_id)
    with committed():
        backend_service.reset_key(key, actor(), ip())
    return jsonify(backend_service.key_to_dict(key))
