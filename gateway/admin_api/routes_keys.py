"""User API keys: create (full key shown once), list (masked), revoke, rotate."""
from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request
from sqlalchemy import select

from ..lookups import get_or_404, id_equals
from ..models import ApiKey, User
from ..services import keys as key_service
from ..transaction import committed
from . import bp
from .common import actor, body, ip, paginate
from .routes_resources import created


def _with_secret(key: ApiKey, plaintext: str) -> dict[str, Any]:
    payload = key_service.to_dict(key)
    payload["key"] = plaintext
    return payload


@bp.post("/users/<int:user_id>/keys")
def create_key(user_id: int) -> Response:
    user = get_or_404(User, user_id)
    with committed():
        key, plaintext = key_service.issue(user, body(optional=True), actor(), ip())
    return created(_with_secret(key, plaintext))


@bp.get("/users/<int:user_id>/keys")
def list_user_keys(user_id: int) -> Response:
    get_or_404(User, user_id)
    return paginate(select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id.desc()), key_service.to_dict)


@bp.post("/keys")
def create_user_and_key() -> Response:
    with committed():
        key, plaintext = key_service.create_from_shortcut(body(), actor(), ip())
    return created(_with_secret(key, plaintext))


@bp.get("/keys")
def list_keys() -> Response:
    query = select(ApiKey).order_by(ApiKey.id.desc())
    user_id = request.args.get("user_id", type=int)
    if user_id:
        query = query.where(id_equals(ApiKey.user_id, user_id))
    return paginate(query, key_service.to_dict)


@bp.get("/keys/<int:key_id>")
def get_key(key_id: int) -> Response:
    return jsonify(key_service.to_dict(get_or_404(ApiKey, key_id)))


@bp.patch("/keys/<int:key_id>")
def update_key(key_id: int) -> Response:
    key = get_or_404(ApiKey, key_id)
    with committed():
        key_service.update(key, body(), actor(), ip())
    return jsonify(key_service.to_dict(key))


@bp.delete("/keys/<int:key_id>")
def revoke_key(key_id: int) -> Response:
    key = get_or_404(ApiKey, key_id)
    with committed():
        key_service.revoke(key, actor(), ip())
    return jsonify(key_service.to_dict(key))


@bp.post("/keys/<int:key_id>/rotate")
def rotate_key(key_id: int) -> Response:
    key = get_or_404(ApiKey, key_id)
    with committed():
        new_key, plaintext = key_service.rotate(key, request.get_json(silent=True) or {}, actor(), ip())
    return created(_with_secret(new_key, plaintext))
