"""Every Prometheus metric KeyGate exports, defined once.

Under gunicorn the values live in ``PROMETHEUS_MULTIPROC_DIR`` (one file per worker,
set up by ``gunicorn.conf.py``) and ``/metrics`` sums them, so a scrape that lands on
any worker sees the whole host. Gauges therefore carry a multiprocess mode; upstream
key health is not a stored gauge at all but read from the database at scrape time
(``HealthCollector``), because the database is where every worker's view of it meets.

Labels are bounded on purpose: route family, status code, tier name, backend id,
a model name only once a backend accepted it (and at most ``MAX_MODELS`` of them per
process), rejection codes chosen by our own code. Never a key, never a client-supplied
string that could hold one (see ``model_label``), and no user id unless ``METRICS_PER_USER`` is on.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.engine import Engine

from .logs import redact

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
MAX_MODELS = 200
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,63}$")

REQUESTS = Counter("keygate_requests", "Requests answered, by route family, status and tier",
                   ["family", "status", "tier"])
USER_REQUESTS = Counter("keygate_user_requests", "Proxied requests per user id (METRICS_PER_USER only)",
                        ["user_id"])
LATENCY = Histogram("keygate_request_duration_seconds", "Time from arrival to the last byte sent",
                    ["family"], buckets=LATENCY_BUCKETS)
TTFB = Histogram("keygate_time_to_first_byte_seconds", "Time from arrival to the first relayed byte",
                 ["family"], buckets=TTFB_BUCKETS)
TOKENS = Counter("keygate_tokens", "Tokens counted, by model and direction (in/out)", ["model", "direction"])
UPSTREAM_REQUESTS = Counter("keygate_upstream_requests", "Requests relayed from an upstream, by backend id "
                            "and outcome", ["backend", "outcome"])
UPSTREAM_ERRORS = Counter("keygate_upstream_errors", "Upstream failures seen by clients, by backend id and kind",
                          ["backend", "kind"])
UPSTREAM_ATTEMPT_FAILURES = Counter("keygate_upstream_attempt_failures", "Failed upstream attempts, including "
                                    "those failover hid from the client, by backend id and kind", ["backend", "kind"])
UPSTREAM_LATENCY = Histogram("keygate_upstream_duration_seconds", "Upstream response time, by backend id",
                             ["backend"], buckets=LATENCY_BUCKETS)
REJECTIONS = Counter("keygate_rejections", "Requests refused by a rate limit (429) or quota (402), by kind",
                     ["kind"])
POOL_EVENTS = Counter("keygate_pool_events", "Upstream pool events: health state changes (state_change:<from>-><to>), "
                      "failover retries, half-open trials, probes, budget exhaustion", ["event"])
LIMITER_STORAGE_ERRORS = Counter("keygate_limiter_storage_errors", "Rate-limit storage (memcached) failures")
DATABASE_ERRORS = Counter("keygate_database_errors", "Database errors (connection lost, timeouts...), by class",
                          ["kind"])
RETENTION_DELETED = Counter("keygate_retention_deleted_rows", "Request-log rows deleted by retention")
OPEN_STREAMS = Gauge("keygate_open_streams", "Streaming responses currently open", multiprocess_mode="livesum")

_models_lock = threading.Lock()
_models_seen: set[str] = set()


def model_label(model: str | None) -> str:
    """A model name as a label value, or ``other`` once this process has seen too many."""
    if not model:
        return "none"
    # Wildcard model patterns ("gpt-*") let a client choose the name: anything that looks
    # like a secret, or is not a plain model name, never becomes a label.
    if not _MODEL_NAME.match(model) or redact(model) != model:
        return "other"
    with _models_lock:
        if model in _models_seen:
            return model
        if len(_models_seen) >= MAX_MODELS:
            return "other"
        _models_seen.add(model)
        return model


class HealthCollector:
    """Upstream key counts by backend and state, read from the database at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from sqlalchemy import func, select
        from sqlalchemy.exc import SQLAlchemyError

        from ..models import Backend, UpstreamKey

        family = GaugeMetricFamily("keygate_upstream_keys", "Enabled upstream keys by backend and health state",
                                   labels=["backend", "state"])
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(Backend.name, UpstreamKey.state, func.count())
                    .join(Backend, UpstreamKey.backend_id == Backend.id)
                    .where(UpstreamKey.enabled.is_(True))
                    .group_by(Backend.name, UpstreamKey.state)
                ).all()
        except SQLAlchemyError:
            return  # the database error is counted by the engine hook; the rest of /metrics still answers
        for backend, state, count in rows:
            family.add_metric([backend, state], int(count))
        yield family
