"""Who may use the portal: sessions, roles and sign-in throttling.

Sessions carry ``"<id>:<session_version>"``; bumping the version (sign-out) makes every
cookie issued before it worthless, even a copied one. Every page needs a signed-in
admin, and every state-changing request needs the ``admin`` role: ``viewer`` accounts
read everything and change nothing. The role check runs in ``before_request`` for
every unsafe method, so a route added later without ``@admin_required`` is still safe.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, abort, redirect, request, url_for
from flask_login import current_user

from ..extensions import db, login_manager
from ..limiter import FailureThrottle, throttle_for
from ..models import Admin
from . import bp

PUBLIC_ENDPOINTS = {"portal.login"}
VIEWER_WRITE_ENDPOINTS = {"portal.logout"}  # the one POST a viewer may send
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.session_protection = "strong"
    login_manager.login_view = "portal.login"
    login_manager.login_message = "Sign in to continue."
    login_manager.login_message_category = "info"


def throttles() -> dict[str, FailureThrottle]:
    """The sign-in failure throttles, kept in the worker's state like every other.
    An address gets twice the username allowance: several admins may share one NAT."""
    return {
        "address": throttle_for("portal-login-address", "ADMIN_AUTH_FAILURES_PER_MINUTE", factor=2),
        "username": throttle_for("portal-login-username", "ADMIN_AUTH_FAILURES_PER_MINUTE"),
    }


@login_manager.user_loader
def load_admin(session_id: str) -> Admin | None:
    ident, _, version = session_id.partition(":")
    if not ident.isdigit() or not version.lstrip("-").isdigit():
        return None
    admin = db.session.get(Admin, int(ident))
    if admin is None or not admin.active or admin.session_version != int(version):
        return None
    return admin


@bp.before_request
def require_admin_session() -> Any:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if request.method not in SAFE_METHODS and request.endpoint not in VIEWER_WRITE_ENDPOINTS \
            and current_user.role != "admin":
        abort(403)
    return None


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only the ``admin`` role may run ``view`` (viewers get 403)."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_authenticated:
            return redirect(url_for("portal.login"))
        if current_user.role != "admin":
            abort(403)
        return view(*args, **kwargs)

    return wrapped
