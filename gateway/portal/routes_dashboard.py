"""The dashboard: traffic and cost for today / 7 / 30 days, a per-day chart, top users
and models, and the upstream pool's health at a glance."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import render_template

from ..services import reports
from . import bp
from .charts import day_bars

CHART_DAYS = 30


@bp.get("/")
def dashboard() -> Any:
    month = reports.day_start() - timedelta(days=CHART_DAYS - 1)
    days = reports.daily(CHART_DAYS)
    return render_template(
        "portal/dashboard.html", windows=reports.windows(), chart=day_bars(days),
        top_users=reports.top_users(month), top_models=reports.by_model(month, limit=5),
        pool=reports.pool_health(),
    )

