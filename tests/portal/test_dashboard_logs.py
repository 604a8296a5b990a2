"""Dashboard figures, request logs (filters, pagination, CSV) and the audit log."""
from __future__ import annotations

import csv
import io
from datetime import timedelta

from flask import Flask

from gateway.extensions import db
from gateway.models import Backend, UpstreamKey
from gateway.timeutil import utcnow


def test_dashboard_counts_today_7_and_30_days(admin_client, make_user, add_usage):
    user_id = make_user("Dana")
    now = utcnow()
    add_usage(user_id, 100, 10, model="gpt-a", cost=0.5)
    add_usage(user_id, 200, 20, model="gpt-b", status=502, when=now - timedelta(days=3))
    add_usage(user_id, 400, 40, model="gpt-a", when=now - timedelta(days=20))
    add_usage(user_id, 800, 80, model="gpt-a", when=now - timedelta(days=40))  # outside every window
    html = admin_client.get("/admin/").get_data(as_text=True)
    today, week, month = html.split('class="card stat"')[1:4]
    assert "<dd>1</dd>" in today and "<dd>100</dd>" in today and "$0.50" in today
    assert "<dd>2</dd>" in week and "<dd>300</dd>" in week and "<dd>30</dd>" in week
    assert "<dd>3</dd>" in month and "<dd>700</dd>" in month and "<dd>70</dd>" in month
    assert week.count("<dd>1</dd>") == 1  # one error (the 502)


def test_dashboard_chart_is_inline_svg_with_one_bar_per_day(admin_client, make_user, add_usage):
    user_id = make_user("Dana")
    add_usage(user_id, 100, 50)
    html = admin_client.get("/admin/").get_data(as_text=True)
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert svg.count("<title>") == 30 and svg.count('class="tin"') == 30
    assert "100 in / 50 out" in svg and "peak 150" in svg
    assert "<script" not in html.replace('<script src="/static/app.js"></script>', "")


def test_dashboard_top_users_models_and_pool_health(app: Flask, admin_client, make_user, add_usage):
    big, small = make_user("Big user"), make_user("Small user")
    add_usage(big, 5000, 0, model="gpt-big")
    add_usage(small, 10, 0, model="gpt-small")
    with app.app_context():
        backend = Backend(name="b", kind="openai", base_url="http://x")
        db.session.add(backend)
        db.session.flush()
        for state, enabled in (("healthy", True), ("healthy", True), ("cooling_down", True), ("unhealthy", True),
                               ("disabled", True), ("healthy", False)):
            db.session.add(UpstreamKey(backend_id=backend.id, secret_encrypted="x", last4="abcd", state=state,
                                       enabled=enabled))
        db.session.commit()
    html = admin_client.get("/admin/").get_data(as_text=True)
    assert html.index("Big user") < html.index("Small user")
    assert html.index("gpt-big") < html.index("gpt-small")
    for state, count in (("healthy", 2), ("cooling_down", 1), ("unhealthy", 1), ("disabled", 2)):
        assert f'<li class="state-{state}"><strong>{count}</strong>' in html


def test_logs_filter_and_paginate(admin_client, make_user, add_usage):
    dana, erin = make_user("Dana"), make_user("Erin")
    add_usage(dana, 10, 1, model="gpt-a", requests=30)
    add_usage(erin, 10, 1, model="gpt-b", status=429)
    page = admin_client.get("/admin/logs").get_data(as_text=True)
    assert "Page 1 of 2 (31)" in page
    only_erin = admin_client.get(f"/admin/logs?user_id={erin}").get_data(as_text=True)
    assert "1 total" in only_erin and ">429<" in only_erin and "gpt-a" not in only_erin
    assert "1 total" in admin_client.get("/admin/logs?model=gpt-b").get_data(as_text=True)
    assert "1 total" in admin_client.get("/admin/logs?status=429").get_data(as_text=True)
    future = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert "0 total" in admin_client.get(f"/admin/logs?since={future}").get_data(as_text=True)
    assert "31 total" not in admin_client.get(f"/admin/logs?until={future}").get_data(as_text=True)


def test_bad_log_filter_is_reported_not_crashed(admin_client):
    response = admin_client.get("/admin/logs?since=yesterday")
    assert response.status_code == 422
    assert "since must be an ISO 8601 timestamp" in response.get_data(as_text=True)


def test_csv_export_respects_filters_and_defuses_formulas(admin_client, make_user, add_usage):
    dana = make_user("Dana")
    add_usage(dana, 10, 1, model="=HYPERLINK(1)")
    add_usage(dana, 20, 2, model="gpt-b")
    response = admin_client.get("/admin/logs.csv?model=%3DHYPERLINK(1)")
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == 1
    assert rows[0]["model"] == "'=HYPERLINK(1)" and rows[0]["tokens_in"] == "10" and rows[0]["user_id"] == str(dana)
    everything = list(csv.DictReader(io.StringIO(admin_client.get("/admin/logs.csv").get_data(as_text=True))))
    assert len(everything) == 2


def test_audit_log_lists_and_filters_changes(admin_client, make_user):
    make_user("Dana")
    html = admin_client.get("/admin/audit").get_data(as_text=True)
    assert "user.create" in html and "admin.login" in html
    filtered = admin_client.get("/admin/audit?action=user.create").get_data(as_text=True)
    assert "user.create" in filtered and "admin.login" not in filtered
