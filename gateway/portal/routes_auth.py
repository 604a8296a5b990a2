"""Sign-in and sign-out.

Unknown usernames and wrong passwords get the same message and cost the same scrypt
check, so the form does not reveal which usernames exist. Failures are counted per
address, per (username, address) and per username (``sign_in_limits``, which states
the exact rule): past a limit the form answers 429 even for the right password, but a
username's backoff never holds back an address that has not failed for it, so nobody
can lock an admin out by failing on purpose.
"""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

from ..services import admins
from ..transaction import committed
from . import bp, sign_in_limits
from .auth import start_session
from .common import ip
from .forms import ActionForm, LoginForm

BAD_CREDENTIALS = "Unknown username or wrong password."


def _safe_next(target: str | None) -> str:
    """Only same-site portal paths, so ?next= cannot send a fresh session elsewhere."""
    if target and target.startswith("/admin") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("portal.dashboard")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if current_user.is_authenticated:
        return redirect(url_for("portal.dashboard"))
    form = LoginForm()
    if not form.validate_on_submit():
        return render_template("portal/login.html", form=form), 400 if request.method == "POST" else 200
    username = form.username.data.strip().lower()
    refused = sign_in_limits.refusal(username, ip())
    if refused is not None:
        wait = refused.retry_after
        return render_template("portal/throttled.html", wait=wait), 429, {"Retry-After": str(wait)}
    admin = admins.check_credentials(username, form.password.data)
    if admin is None:
        sign_in_limits.failed(username, ip())
        form.form_errors.append(BAD_CREDENTIALS)
        return render_template("portal/login.html", form=form), 401
    next_url = _safe_next(request.args.get("next"))
    with committed():
        admins.record_sign_in(admin, ip())
    sign_in_limits.succeeded(username, ip())
    session.clear()  # a new session: nothing from before sign-in survives it
    login_user(admin)
    start_session()
    return redirect(next_url)


@bp.post("/logout")
def logout() -> Any:
    form = ActionForm()
    if form.validate_on_submit():
        with committed():
            admins.sign_out(current_user._get_current_object(), ip())  # every older cookie stops working
        logout_user()
        session.clear()
        flash("Signed out.", "info")
    return redirect(url_for("portal.login"))
