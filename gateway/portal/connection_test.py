"""Test-connection for an upstream key: one GET to the backend's health-check path
(the prober's default for the backend's kind) with the key, a short timeout, no redirects.

Only the status code and latency come back. The upstream body is never read, because
an upstream error page may echo the credential or other tenants' data back to us.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import requests

from ..models import UpstreamKey
from ..proxy import forward
from ..proxy.prober import probe_url
from ..services.backends import box

TIMEOUT = (3.0, 5.0)


@dataclass
class ConnectionResult:
    ok: bool
    status: int | None
    latency_ms: float
    error: str | None = None


def probe(key: UpstreamKey) -> ConnectionResult:
    """The same request the background prober makes (same URL, credential form and
    pooled session, so BLOCK_PRIVATE_UPSTREAMS applies here too)."""
    backend = key.backend
    url = probe_url(backend)
    if url is None:
        return ConnectionResult(False, None, 0.0, "no health-check path for this kind of backend; set one")
    started = time.perf_counter()
    try:
        with forward.session().get(url, headers=forward.credential_headers(backend.kind,
                                                                           box().decrypt(key.secret_encrypted), {}),
                                   timeout=TIMEOUT, allow_redirects=False, stream=True) as response:
            status = response.status_code  # the body is deliberately left unread
    except requests.Timeout:
        return ConnectionResult(False, None, _ms(started), "timed out")
    except requests.RequestException as exc:
        return ConnectionResult(False, None, _ms(started), f"connection failed ({type(exc).__name__})")
    return ConnectionResult(200 <= status < 300, status, _ms(started))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
