"""Users: list with search and usage bars, create/edit, suspend/reactivate, delete,
and the detail page with the user's keys. Writes go through ``services.users``."""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from sqlalchemy import select
from wtforms.fields.choices import SelectChoice

from ..extensions import db
from ..lookups import get_or_404
from ..models import ApiKey, Tier, User
from ..periods import EPOCH
from ..services import keys as key_service
from ..services import reports
from ..services import users as user_service
from ..services.validation import ValidationError
from ..timeutil import parse_datetime
from ..transaction import committed
from . import bp
from .auth import admin_required
from .common import actor, ip, paginate, show_errors
from .forms import ActionForm, KeyForm, RotateForm, SearchForm, UserForm


def usage_bar(user: User) -> dict[str, Any]:
    usage = user_service.current_usage(user)
    quota = user.token_quota
    percent = min(100.0, usage["tokens"] * 100.0 / quota) if quota else (100.0 if quota == 0 else None)
    return {"used": usage["tokens"], "quota": quota, "percent": percent, "requests": usage["requests"],
            "period_end": usage["period_end"], "period_start": usage["period_start"]}


def _user_form(user: User | None = None) -> UserForm:
    if user is None:
        form = UserForm()
    else:
        form = UserForm(data={
            "name": user.name, "email": user.email or "", "tier": user.tier.name, "status": user.status,
            "token_quota": user.token_quota, "request_quota": user.request_quota, "byte_quota": user.byte_quota,
            "quota_period": user.quota_period, "reset_day": user.reset_day,
            "ip_allowlist": "\n".join(user.ip_allowlist or []),
            "allowed_models": "\n".join(user.allowed_models or []),
            "allowed_backends": "\n".join(user.allowed_backends or []), "notes": user.notes or "",
        })
    form.tier.choices = [SelectChoice(t) for t in db.session.scalars(select(Tier.name).order_by(Tier.name))]
    return form


@bp.get("/users")
def users() -> Any:
    search = SearchForm(request.args)
    page = paginate(user_service.search(search.q.data, search.status.data))
    bars = {user.id: usage_bar(user) for user in page.items}
    return render_template("portal/users.html", page=page, bars=bars, search=search)


@bp.route("/users/new", methods=["GET", "POST"])
@admin_required
def user_new() -> Any:
    form = _user_form()
    if form.validate_on_submit():
        try:
            with committed():
                user = user_service.create(form.body(), actor(), ip())
        except ValidationError as error:
            show_errors(form, error)
        else:
            flash(f"Created user {user.name}.", "success")
            return redirect(url_for("portal.user_detail", user_id=user.id))
    return render_template("portal/user_form.html", form=form, user=None), 422 if form.errors else 200


@bp.route("/users/<int:user_id>/edit", methods=["GET", "POST"])
@admin_required
def user_edit(user_id: int) -> Any:
    user = get_or_404(User, user_id)
    form = _user_form(user) if request.method == "GET" else _user_form()
    if form.validate_on_submit():
        try:
            with committed():
                user_service.update(user, form.body(), actor(), ip())
        except ValidationError as error:
            show_errors(form, error)
        else:
            flash("Saved.", "success")
            return redirect(url_for("portal.user_detail", user_id=user.id))
    return render_template("portal/user_form.html", form=form, user=user), 422 if form.errors else 200


def _set_status(user_id: int, status: str, message: str) -> Any:
    user = get_or_404(User, user_id)
    if ActionForm().validate_on_submit():
        try:
            with committed():
                user_service.update(user, {"status": status}, actor(), ip())
        except ValidationError as error:
            flash("; ".join(error.errors.values()), "error")
        else:
            flash(message.format(name=user.name), "success")
    return redirect(url_for("portal.user_detail", user_id=user_id))


@bp.post("/users/<int:user_id>/suspend")
@admin_required
def user_suspend(user_id: int) -> Any:
    return _set_status(user_id, "suspended", "Suspended {name}: their keys stop working now.")


@bp.post("/users/<int:user_id>/reactivate")
@admin_required
def user_reactivate(user_id: int) -> Any:
    return _set_status(user_id, "active", "Reactivated {name}.")


@bp.post("/users/<int:user_id>/delete")
@admin_required
def user_delete(user_id: int) -> Any:
    user = get_or_404(User, user_id)
    if ActionForm().validate_on_submit():
        with committed():
            user_service.delete(user, actor(), ip())
        flash(f"Deleted {user.name} and revoked their keys.", "success")
    return redirect(url_for("portal.users"))


@bp.get("/users/<int:user_id>")
def user_detail(user_id: int) -> Any:
    user = get_or_404(User, user_id)
    keys = list(db.session.scalars(select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.id.desc())))
    bar = usage_bar(user)
    since = parse_datetime(bar["period_start"]) if bar["period_start"] else EPOCH
    return render_template(
        "portal/user_detail.html", user=user, keys=keys, bar=bar, status_of=key_service.status,
        models=reports.by_model(since, user_id=user.id), action=ActionForm(), key_form=KeyForm(),
        rotate_form=RotateForm(),
    )
