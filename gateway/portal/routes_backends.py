"""Backends and their upstream keys. Secrets are write-only: the forms accept them,
pages show ``****last4``. Writes go through ``services.backends``."""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from sqlalchemy import select

from ..extensions import db
from ..lookups import get_or_404
from ..models import Backend, UpstreamKey
from ..services import audit
from ..services import backends as backend_service
from ..services.validation import ValidationError
from ..transaction import committed
from . import bp
from .auth import admin_required
from .common import actor, ip, show_errors
from .connection_test import probe
from .forms import ActionForm, BackendForm, UpstreamKeyEditForm, UpstreamKeyForm


def _backend_form(backend: Backend | None) -> BackendForm:
    if backend is None or request.method == "POST":
        return BackendForm()
    return BackendForm(data={
        "name": backend.name, "kind": backend.kind, "base_url": backend.base_url, "weight": backend.weight,
        "models": "\n".join(backend.models or []),
        "model_aliases": "\n".join(f"{k} = {v}" for k, v in (backend.model_aliases or {}).items()),
        "prices": "\n".join(f"{m} = {p.get('input', 0)} {p.get('output', 0)}"
                            for m, p in (backend.prices or {}).items()),
        "enabled": backend.enabled, "connect_timeout": backend.connect_timeout,
        "read_timeout": backend.read_timeout, "health_check_path": backend.health_check_path or "",
        "relay_cookies": bool(backend.relay_cookies),
    })


@bp.get("/backends")
def backends() -> Any:
    rows = list(db.session.scalars(select(Backend).order_by(Backend.name)))
    return render_template("portal/backends.html", backends=[backend_service.backend_to_dict(b) for b in rows])


def _save_backend(backend: Backend | None) -> Any:
    form = _backend_form(backend)
    if form.validate_on_submit():
        try:
            with committed():
                if backend is None:
                    backend = backend_service.create_backend(form.body(), actor(), ip())
                else:
                    backend_service.update_backend(backend, form.body(), actor(), ip())
        except ValidationError as error:
            show_errors(form, error)
        else:
            flash(f"Saved backend {backend.name}.", "success")
            return redirect(url_for("portal.backend_detail", backend_id=backend.id))
    return render_template("portal/backend_form.html", form=form, backend=backend), 422 if form.errors else 200


@bp.route("/backends/new", methods=["GET", "POST"])
@admin_required
def backend_new() -> Any:
    return _save_backend(None)


@bp.route("/backends/<int:backend_id>/edit", methods=["GET", "POST"])
@admin_required
def backend_edit(backend_id: int) -> Any:
    return _save_backend(get_or_404(Backend, backend_id))


@bp.post("/backends/<int:backend_id>/delete")
@admin_required
def backend_delete(backend_id: int) -> Any:
    backend = get_or_404(Backend, backend_id)
    if ActionForm().validate_on_submit():
        with committed():
            backend_service.delete_backend(backend, actor(), ip())
        flash(f"Deleted backend {backend.name} and its upstream keys.", "success")
    return redirect(url_for("portal.backends"))


@bp.route("/backends/<int:backend_id>", methods=["GET", "POST"])
def backend_detail(backend_id: int) -> Any:
    """The backend and its upstream keys; POST adds a key (admin only, via before_request)."""
    backend = get_or_404(Backend, backend_id)
    form = UpstreamKeyForm()
    if request.method == "POST" and form.validate_on_submit():
        try:
            with committed():
                key = backend_service.add_key(backend, form.body(), actor(), ip())
        except ValidationError as error:
            show_errors(form, error)
        else:
            flash(f"Added upstream key ****{key.last4}.", "success")
            return redirect(url_for("portal.backend_detail", backend_id=backend.id))
    keys = list(db.session.scalars(select(UpstreamKey).where(UpstreamKey.backend_id == backend.id)
                                   .order_by(UpstreamKey.id)))
    return render_template("portal/backend_detail.html", backend=backend, keys=keys, form=form,
                           action=ActionForm()), 422 if form.errors else 200


@bp.route("/upstream-keys/<int:key_id>/edit", methods=["GET", "POST"])
@admin_required
def upstream_key_edit(key_id: int) -> Any:
    key = get_or_404(UpstreamKey, key_id)
    form = UpstreamKeyEditForm(obj=key) if request.method == "GET" else UpstreamKeyEditForm()
    if form.validate_on_submit():
        try:
            with committed():
                backend_service.update_key(key, form.body(), actor(), ip())
        except ValidationError as error:
            show_errors(form, error)
        else:
            flash("Saved.", "success")
            return redirect(url_for("portal.backend_detail", backend_id=key.backend_id))
    return render_template("portal/upstream_key_form.html", form=form, key=key), 422 if form.errors else 200


@bp.post("/upstream-keys/<int:key_id>/reset")
@admin_required
def upstream_key_reset(key_id: int) -> Any:
    key = get_or_404(UpstreamKey, key_id)
    if ActionForm().validate_on_submit():
        with committed():
            backend_service.reset_key(key, actor(), ip())
        flash(f"****{key.last4} is healthy again.", "success")
    return redirect(url_for("portal.backend_detail", backend_id=key.backend_id))


@bp.post("/upstream-keys/<int:key_id>/delete")
@admin_required
def upstream_key_delete(key_id: int) -> Any:
    key = get_or_404(UpstreamKey, key_id)
    backend_id = key.backend_id
    if ActionForm().validate_on_submit():
        with committed():
            backend_service.delete_key(key, actor(), ip())
        flash(f"Deleted upstream key ****{key.last4}.", "success")
    return redirect(url_for("portal.backend_detail", backend_id=backend_id))


@bp.post("/upstream-keys/<int:key_id>/test")
@admin_required
def upstream_key_test(key_id: int) -> Any:
    key = get_or_404(UpstreamKey, key_id)
    if ActionForm().validate_on_submit():
        outcome = probe(key)
        with committed():
            audit.log_action(actor(), "upstream_key.test", "upstream_key", key.id,
                             {"status": outcome.status, "latency_ms": outcome.latency_ms, "error": outcome.error},
                             ip())
        if outcome.status is not None:
            flash(f"****{key.last4}: HTTP {outcome.status} in {outcome.latency_ms:.0f} ms ({outcome.verdict}).",
                  outcome.category)
        else:
            flash(f"****{key.last4}: {outcome.error} after {outcome.latency_ms:.0f} ms.", "error")
    return redirect(url_for("portal.backend_detail", backend_id=key.backend_id))
