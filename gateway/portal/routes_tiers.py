"""Tiers: list, create, edit, delete (refused while users are on the tier)."""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from sqlalchemy import func, select

from ..extensions import db
from ..lookups import get_or_404
from ..models import Tier, User
from ..services import tiers as tier_service
from ..services.validation import ValidationError
from ..transaction import committed
from . import bp
from .auth import admin_required
from .common import actor, ip, show_errors
from .forms import ActionForm, TierForm


@bp.get("/tiers")
def tiers() -> Any:
    rows = list(db.session.scalars(select(Tier).order_by(Tier.name)))
    users = dict(db.session.execute(select(User.tier_id, func.count()).group_by(User.tier_id)).all())
    return render_template("portal/tiers.html", tiers=rows, users=users, action=ActionForm())


@bp.route("/tiers/new", methods=["GET", "POST"])
@admin_required
def tier_new() -> Any:
    form = TierForm()
    if form.validate_on_submit():
        try:
            with committed():
                tier = tier_service.create(form.body(), actor(), ip())
        except ValidationError as error:
            show_errors(form, error)
        else:
            flash(f"Created tier {tier.name}.", "success")
            return redirect(url_for("portal.tiers"))
    return render_template("portal/tier_form.html", form=form, tier=None), 422 if form.errors else 200


@bp.route("/tiers/<int:tier_id>/edit", methods=["GET", "POST"])
@admin_required
def tier_edit(tier_id: int) -> Any:
    tier = get_or_404(Tier, tier_id)
    form = TierForm(obj=tier) if request.method == "GET" else TierForm()
    if form.validate_on_submit():
        try:
            with committed():
                tier_service.update(tier, form.body(), actor(), ip())
        except ValidationError as error:
            show_errors(form, error)
        else:
            flash("Saved.", "success")
            return redirect(url_for("portal.tiers"))
    return render_template("portal/tier_form.html", form=form, tier=tier), 422 if form.errors else 200


@bp.post("/tiers/<int:tier_id>/delete")
@admin_required
def tier_delete(tier_id: int) -> Any:
    tier = get_or_404(Tier, tier_id)
    if ActionForm().validate_on_submit():
        name = tier.name
        try:
            with committed():
                tier_service.delete(tier, actor(), ip())
        except ValidationError as error:
            flash("; ".join(error.errors.values()), "error")
        else:
            flash(f"Deleted tier {name}.", "success")
    return redirect(url_for("portal.tiers"))
