"""Who may use the portal: sessions, roles and sign-in throttling.

Sessions carry ``"<id>:<session_version>"``; bumping the version (sign-out) makes every
cookie issued before it worthless, even a copied one. Every page needs a signed-in
admin, and every state-changing request needs the ``admin`` role: ``viewer`` accounts
read everything and change nothing. The role check runs in ``before_request`` for
every unsafe method, so a route added later without ``@admin_required`` is still safe.

A session ends on its own after ``PORTAL_IDLE_TIMEOUT_SECONDS`` without a request, and
``PORTAL_SESSION_MAX_SECONDS`` after sign-in whatever its use (both stamped in the
signed session cookie, so they hold on every worker). Flask-Login's "strong" session
protection fingerprints the *trusted* client address (``addresses.client_ip``, an IPv6
address as its /64) and the User-Agent: a client-chosen ``X-Forwarded-For`` changes
nothing, while a session presented from another trusted address is signed out.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, abort, current_app, flash, redirect, request, session, url_for
from flask_login import current_user, logout_user

from ..addresses import client_ip, limit_identity
from ..extensions import db, login_manager
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
    login_manager._session_identifier_generator = session_identifier


def session_identifier() -> str:
    """What "strong" session protection compares: the trusted client address and the
    User-Agent. Flask-Login's own reads the client-supplied ``X-Forwarded-For``."""
    agent = request.headers.get("User-Agent", "")
    return hashlib.sha512(f"{limit_identity(client_ip())}|{agent}".encode("utf-8", "replace")).hexdigest()


SIGNED_IN_AT = "_kg_signed_in_at"
SEEN_AT = "_kg_seen_at"
SEEN_RESOLUTION_SECONDS = 15  # the last-seen stamp is rewritten at most this often (a cookie per write)


def start_session() -> None:
    """Stamp a new session (right after sign-in) with its start and last use."""
    now = int(time.time())
    session[SIGNED_IN_AT] = now
    session[SEEN_AT] = now


def _session_expired() -> bool:
    """True when the session was idle too long or is older than its lifetime; otherwise
    its last use is moved to now."""
    config = current_app.config
    now = int(time.time())
    started, seen = session.get(SIGNED_IN_AT), session.get(SEEN_AT)
    if not isinstance(started, int) or not isinstance(seen, int):
        return True  # not stamped by start_session: not a session this code issued
    if now - seen > config["PORTAL_IDLE_TIMEOUT_SECONDS"] or now - started > config["PORTAL_SESSION_MAX_SECONDS"]:
        return True
    if now - seen >= SEEN_RESOLUTION_SECONDS:
        session[SEEN_AT] = now
    return False


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
    if _session_expired():
        logout_user()
        session.clear()
        flash("Your session expired; sign in again.", "info")
        return redirect(url_for("portal.login"))
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
