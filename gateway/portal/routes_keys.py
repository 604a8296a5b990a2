"""User keys: create (the full key is shown once, in this response only), rotate with a
grace period, change expiry, revoke. Writes go through ``services.keys``.

The page that shows a new key is rendered straight from the POST, never through a
redirect or a flashed message, so the key is not kept in the session cookie, and it is
sent ``no-store`` so the browser does not cache it.
"""
from __future__ import annotations

from typing import Any

from flask import Response, flash, make_response, redirect, render_template, url_for

from ..lookups import get_or_404
from ..models import ApiKey, User
from ..services import keys as key_service
from ..services.validation import ValidationError
from ..transaction import committed
from . import bp
from .auth import admin_required
from .common import actor, ip
from .forms import ActionForm, KeyForm, RotateForm


def _show_once(key: ApiKey, plaintext: str, rotated: ApiKey | None = None) -> Response:
    response = make_response(render_template("portal/key_created.html", key=key, plaintext=plaintext,
                                              rotated=rotated))
    response.headers["Cache-Control"] = "no-store"
    return response


def _flash_errors(error: ValidationError) -> None:
    flash("; ".join(f"{k} {v}" for k, v in error.errors.items()), "error")


@bp.post("/users/<int:user_id>/keys")
@admin_required
def key_create(user_id: int) -> Any:
    user = get_or_404(User, user_id)
    form = KeyForm()
    if form.validate_on_submit():
        try:
            with committed():
                key, plaintext = key_service.issue(user, form.body(), actor(), ip())
        except ValidationError as error:
            _flash_errors(error)
        else:
            return _show_once(key, plaintext)
    for name, messages in form.errors.items():
        flash(f"{form[name].label.text if name in form else name}: {'; '.join(messages)}", "error")
    return redirect(url_for("portal.user_detail", user_id=user_id))


@bp.post("/keys/<int:key_id>/rotate")
@admin_required
def key_rotate(key_id: int) -> Any:
    old = get_or_404(ApiKey, key_id)
    form = RotateForm()
    if form.validate_on_submit():
        try:
            with committed():
                new, plaintext = key_service.rotate(old, {"grace_seconds": form.grace_seconds.data}, actor(), ip())
        except ValidationError as error:
            _flash_errors(error)
        else:
            return _show_once(new, plaintext, rotated=old)
    else:
        flash("Grace period: " + "; ".join(form.grace_seconds.errors or ["invalid"]), "error")
    return redirect(url_for("portal.user_detail", user_id=old.user_id))


@bp.post("/keys/<int:key_id>/expiry")
@admin_required
def key_expiry(key_id: int) -> Any:
    key = get_or_404(ApiKey, key_id)
    form = KeyForm()
    if form.validate_on_submit():
        try:
            with committed():
                key_service.update(key, {"expires_at": form.body()["expires_at"]}, actor(), ip())
        except ValidationError as error:
            _flash_errors(error)
        else:
            flash("Expiry saved.", "success")
    else:
        flash("Expiry: " + "; ".join(form.expires_at.errors or ["invalid"]), "error")
    return redirect(url_for("portal.user_detail", user_id=key.user_id))


@bp.post("/keys/<int:key_id>/revoke")
@admin_required
def key_revoke(key_id: int) -> Any:
    key = get_or_404(ApiKey, key_id)
    if ActionForm().validate_on_submit():
        with committed():
            key_service.revoke(key, actor(), ip())
        flash(f"Revoked {key.prefix}****{key.last4}.", "success")
    return redirect(url_for("portal.user_detail", user_id=key.user_id))
