"""Structured logs: one parseable JSON line per request carrying the request id, secrets
redacted by the last-line-of-defence filter, and no key from a query string in any
line gunicorn writes."""
from __future__ import annotations

import io
import json
import logging
import time

import requests

from gateway.observability.logs import JsonFormatter, RedactionFilter, redact
from tests.ops.conftest import chat, json_lines


def _request_line(output: str, request_id: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in json_lines(output()) if e.get("event") == "request" and e.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_each_request_logs_one_json_line_with_its_request_id(ops_deployment):
    headers = {"Authorization": f"Bearer {ops_deployment.key}", "X-Request-ID": "ops-json-line-1"}
    response = requests.post(ops_deployment.url + "/v1/chat/completions", json=chat("hi [[tokens:7]]", stream=True),
                             headers=headers, timeout=10)
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "ops-json-line-1"

    lines = _request_line(ops_deployment.gateway.output, "ops-json-line-1")

    assert len(lines) == 1
    entry = lines[0]
    assert entry["level"] == "info" and entry["logger"] == "gateway.request"
    assert {k: entry[k] for k in ("route", "family", "status", "model", "tokens_out", "outcome", "streamed",
                                  "user_id", "tier", "backend_id")} == {
        "route": "/v1/chat/completions", "family": "openai", "status": 200, "model": "gpt-4o-mini",
        "tokens_out": 7, "outcome": "ok", "streamed": True, "user_id": ops_deployment.user_id, "tier": "pro",
        "backend_id": ops_deployment.openai_backend_id}
    assert ops_deployment.key.startswith(entry["key_prefix"]) and entry["latency_ms"] > 0
    assert entry["ttfb_ms"] is not None and entry["tokens_in"] > 0


def test_a_request_without_an_upstream_is_logged_too_and_a_generated_id_is_used(ops_deployment):
    response = requests.post(ops_deployment.url + "/v1/chat/completions", json=chat(), timeout=10,
                             headers={"Authorization": "Bearer nonsense"})
    request_id = response.headers["X-Request-ID"]
    assert response.status_code == 401 and len(request_id) == 32

    [entry] = _request_line(ops_deployment.gateway.output, request_id)

    assert (entry["status"], entry["outcome"], entry["family"]) == (401, "rejected", "openai")


def test_no_line_of_output_carries_a_key_sent_in_a_query_string(ops_deployment):
    key = ops_deployment.key
    response = requests.get(ops_deployment.url + f"/api/usage?key={key}", timeout=10,
                            headers={"X-Request-ID": "ops-query-key"})
    assert response.status_code == 200
    requests.get(ops_deployment.url + f"/no/such/path?key={key}&x=1", timeout=10)
    _request_line(ops_deployment.gateway.output, "ops-query-key")
    time.sleep(0.2)  # the access log line is written after the response

    output = ops_deployment.gateway.output()

    assert '"GET /api/usage HTTP/1.1" 200' in output  # gunicorn's access line, path only
    assert key not in output and key[len("sk-pro-"):] not in output


def _emit(message: str, *args, **fields) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactionFilter())
    logger = logging.getLogger("tests.ops.redaction")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.error(message, *args, extra={"fields": fields} if fields else None)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_redaction_filter_catches_a_planted_key_in_message_arguments_and_fields():
    key = "sk-pro-Zq3xV9mK2pL8wR4tY7uN1bC6dF0gH5jA"
    line = _emit("upstream said %s for header %r", f"bad key {key}", {"x-api-key": "abcDEF123456789xyz"},
                 url=f"https://a.test/v1?key={key}&model=x", auth=f"Bearer {key}")

    assert key not in line and "abcDEF123456789xyz" not in line
    entry = json.loads(line)
    assert entry["message"].startswith("upstream said bad key [REDACTED]")
    assert entry["url"] == "https://a.test/v1?key=[REDACTED]&model=x"
    assert entry["auth"] == "Bearer [REDACTED]"


def test_redaction_filter_covers_exceptions_and_keeps_harmless_text():
    try:
        raise ValueError("Authorization: Bearer kga-AbCdEf0123456789GhIjKl")
    except ValueError:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RedactionFilter())
        logger = logging.getLogger("tests.ops.redaction.exc")
        logger.propagate = False
        logger.addHandler(handler)
        logger.exception("failed")
        logger.removeHandler(handler)
    assert "AbCdEf0123456789GhIjKl" not in stream.getvalue()
    # request ids (hex), model names and plain words survive
    text = "request 9f86d081884c7d659a2feaa0c55ad015 model gpt-4o-mini status 200"
    assert redact(text) == text
    # a key with a custom tier prefix is still caught by its random part
    assert "Xy7" not in redact("key team-Xy7Lm3Qp9Rt2Vw5Zb8Nc4Kd6Hf1Gj0Ss")
