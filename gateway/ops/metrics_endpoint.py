"""``/metrics``: Prometheus text format, summed over every gunicorn worker.

Under gunicorn each scrape builds a fresh registry over the multiprocess folder
(a registry kept between scrapes would hold stale per-worker files open); outside
gunicorn (the Flask test client, ``flask run``) the process's own registry is used.
Access: a Bearer token from ``METRICS_TOKEN``, or a client address inside
``METRICS_ALLOW`` (loopback by default), because metrics name backends and tiers.
"""
from __future__ import annotations

import hmac
from collections.abc import Iterator

from flask import Response, abort, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from ..addresses import address_allowed, client_ip
from ..extensions import db
from ..observability.events import sync_limiter_errors
from ..observability.metrics import HealthCollector
from ..worker_state import worker_state
from . import bp


class _ProcessRegistry:
    """The default registry as one collector (describe() empty: no name clash checks)."""

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def _allowed() -> bool:
    tokens = current_app.config["METRICS_TOKEN"]
    header = request.headers.get("Authorization", "")
    if tokens and header.startswith("Bearer "):
        presented = header[len("Bearer "):].strip().encode()
        if any(hmac.compare_digest(presented, token.encode()) for token in tokens):
            return True
    return address_allowed(client_ip(), current_app.config["METRICS_ALLOW"])


@bp.get("/metrics")
def metrics() -> Response:
    if not _allowed():
        abort(403)
    sync_limiter_errors(worker_state().storage)
    registry = CollectorRegistry()
    if current_app.config["PROMETHEUS_MULTIPROC_DIR"]:
        MultiProcessCollector(registry, path=current_app.config["PROMETHEUS_MULTIPROC_DIR"])
    else:
        registry.register(_ProcessRegistry())
    registry.register(HealthCollector(db.engine))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST,
                    headers={"Cache-Control": "no-store"})
