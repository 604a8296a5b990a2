"""/metrics against 2 real gunicorn workers: counters are summed across workers, labels
never carry a secret, and access needs the loopback address or the token."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.deployment import ANTHROPIC_SECRET, UPSTREAM_SECRET
from tests.ops.conftest import METRICS_TOKEN, chat, json_lines


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(base + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_and_histograms_sum_across_two_workers(ops_deployment):
    base, key, n = ops_deployment.url, ops_deployment.key, 24

    def call(i: int) -> int:
        # a fresh connection each time, so both workers take requests
        return requests.post(base + "/v1/chat/completions", json=chat(f"hi {i} [[tokens:5]]"),
                             headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, range(n))) == [200] * n
    ops_deployment.wait_for_logs(n)

    pids = {entry["pid"] for entry in json_lines(ops_deployment.gateway.output())
            if entry.get("event") == "request" and entry.get("family") == "openai"}
    assert len(pids) == 2, "both workers must have served requests for this test to prove anything"
    assert len(list(Path(ops_deployment.gateway.env["PROMETHEUS_MULTIPROC_DIR"]).glob("counter_*.db"))) >= 2
    for _ in range(4):  # every scrape, whichever worker answers it, sees the whole host
        samples = scrape(base)
        assert value(samples, "keygate_requests_total", family="openai", status="200", tier="pro") == n
        assert value(samples, "keygate_request_duration_seconds_count", family="openai") == n
        assert value(samples, "keygate_upstream_requests_total", backend=str(ops_deployment.openai_backend_id),
                     outcome="ok") == n
        assert value(samples, "keygate_tokens_total", model="gpt-4o-mini", direction="out") == 5 * n
    assert value(samples, "keygate_upstream_keys", backend="fake-openai", state="healthy") == 1
    assert value(samples, "keygate_open_streams") == 0


def test_rejections_are_counted_by_kind(ops_deployment):
    base = ops_deployment.url
    before = scrape(base)
    response = requests.post(base + "/v1/chat/completions", json=chat(),
                             headers={"Authorization": "Bearer sk-pro-not-a-real-key-000000000000000000"}, timeout=10)
    assert response.status_code == 401
    after = scrape(base)
    assert value(after, "keygate_requests_total", family="openai", status="401", tier="none") == \
        value(before, "keygate_requests_total", family="openai", status="401", tier="none") + 1


def test_labels_never_carry_a_key_or_a_client_supplied_string(ops_deployment):
    base, key = ops_deployment.url, ops_deployment.key
    headers = {"Authorization": f"Bearer {key}"}
    planted_model = f"gpt-{UPSTREAM_SECRET}"
    requests.post(base + "/v1/chat/completions", json=chat(model=planted_model), headers=headers, timeout=10)
    requests.post(base + "/v1/chat/completions", json=chat(model=key), headers=headers, timeout=10)
    requests.post(base + "/v1/chat/completions", json=chat(), timeout=10,
                  headers={"Authorization": f"Bearer {key}x", "X-Request-ID": "planted-" + key[-20:]})
    requests.post(base + "/v1/messages", json={"model": "claude-3-haiku", "max_tokens": 5,
                                               "messages": [{"role": "user", "content": "hi"}]},
                  headers={"x-api-key": key}, timeout=10)
    time.sleep(0.3)

    text = requests.get(base + "/metrics", timeout=10).text

    for secret in (key, key[len("sk-pro-"):], UPSTREAM_SECRET, ANTHROPIC_SECRET, "CANARY", key[-20:]):
        assert secret not in text
    assert "user_id" not in text  # METRICS_PER_USER is off by default


def test_metrics_need_an_allowed_address_or_the_token(ops_gateway):
    outside = {"X-Forwarded-For": "203.0.113.9"}  # one trusted hop: the gateway sees this address

    assert requests.get(ops_gateway.url + "/metrics", headers=outside, timeout=10).status_code == 403
    assert requests.get(ops_gateway.url + "/metrics", timeout=10,
                        headers={**outside, "Authorization": "Bearer wrong-token-0123456789"}).status_code == 403
    allowed = requests.get(ops_gateway.url + "/metrics", timeout=10,
                           headers={**outside, "Authorization": f"Bearer {METRICS_TOKEN}"})
    assert allowed.status_code == 200
    assert "keygate_requests_total" in allowed.text


def _backend_on_a_closed_port(client, admin_headers, name: str):  # type: ignore[no-untyped-def]
    """An OpenAI backend whose every attempt fails to connect, one upstream key, and a user key."""
    backend = client.post("/api/admin/backends", json={"name": name, "kind": "openai", "models": ["*"],
                                                       "base_url": "http://127.0.0.1:9/v1"},
                          headers=admin_headers).get_json()
    client.post(f"/api/admin/backends/{backend['id']}/keys", json={"secret": f"sk-{name}-key-000001"},
                headers=admin_headers)
    key = client.post("/api/admin/keys", json={"name": name}, headers=admin_headers).get_json()["key"]
    return backend, key


def test_failed_upstream_attempts_are_counted_per_backend_even_when_failover_hides_them(client, admin_headers):
    """In-process: a backend on a closed port fails every attempt; the client sees 502 and
    the attempt counter names the backend."""
    from prometheus_client import REGISTRY

    backend, key = _backend_on_a_closed_port(client, admin_headers, "dead")
    labels = {"backend": str(backend["id"]), "kind": "connection_error"}
    before = REGISTRY.get_sample_value("keygate_upstream_attempt_failures_total", labels) or 0.0
    response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 502
    after = REGISTRY.get_sample_value("keygate_upstream_attempt_failures_total", labels)
    assert after == before + 1
    [row] = client.get("/api/admin/logs", headers=admin_headers).get_json()["items"]
    assert row["backend_id"] == backend["id"] and row["status"] == 502


def test_pool_health_transitions_are_exported(client, admin_headers):
    """Three failures make a key unhealthy; the transition appears as a Prometheus counter."""
    from prometheus_client import REGISTRY

    backend, key = _backend_on_a_closed_port(client, admin_headers, "flaky")
    labels = {"event": "state_change:healthy->unhealthy"}
    before = REGISTRY.get_sample_value("keygate_pool_events_total", labels) or 0.0
    for _ in range(3):
        client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                    json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert REGISTRY.get_sample_value("keygate_pool_events_total", labels) == before + 1
