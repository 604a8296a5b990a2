"""Sign-in and sign-out.

Unknown usernames and wrong passwords get the same message and cost the same scrypt
check, so the form does not reveal which usernames exist. Failures are counted per
address and per username; past the limit the form answers 429 even for the right
password, so guessing stays slow whichever of the two an attacker varies.
"""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from ..models import Admin
from ..services import audit
from ..timeutil import utcnow
from . import bp
from .auth import throttles
from .common import ip
from .forms import ActionForm, LoginForm

BAD_CREDENTIALS = "Unknown username or wrong password."
_DUMMY_HASH = generate_password_hash("not-a-real-password-but-the-same-cost")


def _safe_next(target: str | None) -> str:
    """Only same-site portal paths, so ?next= cannot send a fresh session elsewhere."""
    if target and target.startswith("/admin") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("portal.dashboard")


def _throttled(username: str) -> int | None:
    """Seconds to wait when the address or the username is over its failure budget."""
    limits = throttles()
    for scope, identity in (("address", ip()), ("username", username)):
        if limits[scope].blocked(identity):
            return limits[scope].retry_after(identity)
    return None


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if current_user.is_authenticated:
        return redirect(url_for("portal.dashboard"))
    form = LoginForm()
    if not form.validate_on_submit():
        return render_template("portal/login.html", form=form), 400 if request.method == "POST" else 200
    username = form.username.data.strip().lower()
    wait = _throttled(username)
    if wait is not None:
        response = render_template("portal/throttled.html", wait=wait), 429, {"Retry-After": str(wait)}
        return response
    admin = db.session.scalar(select(Admin).where(func.lower(Admin.username) == username))
    valid = check_password_hash(admin.password_hash if admin else _DUMMY_HASH, form.password.data)
    if not (admin and valid and admin.active):
        throttles()["address"].count_failure(ip())
        throttles()["username"].count_failure(username)
        form.form_errors.append(BAD_CREDENTIALS)
        return render_template("portal/login.html", form=form), 401
    next_url = _safe_next(request.args.get("next"))
    session.clear()  # a new session: nothing from before sign-in survives it
    login_user(admin)
    admin.last_login_at = utcnow()
    audit.log_action(f"admin:{admin.username}", "admin.login", "admin", admin.id, {}, ip())
    db.session.commit()
    return redirect(next_url)


@bp.post("/logout")
def logout() -> Any:
    form = ActionForm()
    if form.validate_on_submit():
        admin = current_user._get_current_object()
        admin.session_version = (admin.session_version or 0) + 1  # every older cookie stops working
        audit.log_action(f"admin:{admin.username}", "admin.logout", "admin", admin.id, {}, ip())
        db.session.commit()
        logout_user()
        session.clear()
        flash("Signed out.", "info")
    return redirect(url_for("portal.login"))
