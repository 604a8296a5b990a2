"""Test-connection for an upstream key: one GET to the backend's health-check path
(the prober's default for the backend's kind) with the key, a short timeout, no redirects.

Only the status code and latency come back. The upstream body is never read, because
an upstream error page may echo the credential or other tenants' data back to us.
The answer is judged by the prober's rule (``prober.verdict``), so the portal and the
background prober never disagree about the same answer: success, failure, or
inconclusive (a 4xx that says the health path is wrong, not the key).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import requests

from ..models import UpstreamKey
from ..proxy import forward
from ..proxy.prober import probe_url, verdict
from ..services.backends import box

TIMEOUT = (3.0, 5.0)
# verdict -> (word shown, flash category)
SHOWN = {True: ("ok", "success"), False: ("failed", "error"), None: ("inconclusive", "warning")}


@dataclass
class ConnectionResult:
    ok: bool | None  # None: inconclusive (see ``prober.verdict``)
    status: int | None
    latency_ms: float
    error: str | None = None

    @property
    def verdict(self) -> str:
        """``ok``, ``failed`` or ``inconclusive``."""
        return SHOWN[self.ok][0]

    @property
    def category(self) -> str:
        """The portal's flash category for this result."""
        return SHOWN[self.ok][1]


def probe(key: UpstreamKey) -> ConnectionResult:
    """The same request the background prober makes (same URL, credential form and
    pooled session, so BLOCK_PRIVATE_UPSTREAMS applies here too), judged the same way."""
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
    return ConnectionResult(verdict(status), status, _ms(started))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
