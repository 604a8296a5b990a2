"""Graceful shutdown: SIGTERM to the gunicorn master stops new connections, lets an
open stream finish (within GATEWAY_GRACEFUL_TIMEOUT) and its usage is recorded."""
from __future__ import annotations

import json
import signal
import time

import requests
from sqlalchemy import create_engine, select

from gateway.models import RequestLog
from tests.conftest import make_env
from tests.fixtures.deployment import deploy
from tests.fixtures.gateway_server import start_gateway
from tests.ops.conftest import chat


def test_sigterm_lets_an_open_stream_finish_and_records_its_usage(migrated, tmp_path, fake_upstream):
    server = start_gateway(make_env(migrated, tmp_path / "instance", LOG_FORMAT="json"), tmp_path / "gw.log",
                           workers=1)
    try:
        deployment = deploy(server, fake_upstream, migrated)
        response = requests.post(server.url + "/v1/chat/completions", stream=True, timeout=15,
                                 json=chat("slow [[interval:0.1]] [[tokens:20]]", stream=True),
                                 headers={"Authorization": f"Bearer {deployment.key}", "X-Request-ID": "drain-1"})
        assert response.status_code == 200
        lines = response.iter_lines()
        events = [next(lines)]
        server.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        events += [line for line in lines if line]

        data = [json.loads(line[6:]) for line in events if line.startswith(b"data: {")]
        assert events[-1] == b"data: [DONE]"
        assert sum(1 for event in data if event["choices"] and event["choices"][0]["delta"].get("content")) == 20
        assert time.monotonic() - started > 1.0  # the stream really was still running at SIGTERM
        assert server.process.wait(15) == 0
    finally:
        server.stop()

    engine = create_engine(migrated)
    with engine.connect() as conn:
        row = conn.execute(select(RequestLog.outcome, RequestLog.tokens_out, RequestLog.status)
                           .where(RequestLog.request_id == "drain-1")).one()
    engine.dispose()
    assert tuple(row) == ("ok", 20, 200)
