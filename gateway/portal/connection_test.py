"""Test-connection for an upstream key: one GET to the backend's health-check path
(default ``/v1/models``) with the key, a short timeout, no redirects.

Only the status code and latency come back. The upstream body is never read, because
an upstream error page may echo the credential or other tenants' data back to us.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import requests

from ..models import UpstreamKey
from ..services.backends import box

TIMEOUT = (3.0, 5.0)
DEFAULT_PATH = "/v1/models"
ANTHROPIC_VERSION = "2023-06-01"


@dataclass
class Outcome:
    ok: bool
    status: int | None
    latency_ms: float
    error: str | None = None


def auth_headers(kind: str, secret: str) -> dict[str, str]:
    if kind == "anthropic":
        return {"x-api-key": secret, "anthropic-version": ANTHROPIC_VERSION}
    return {"Authorization": f"Bearer {secret}"}


def probe(key: UpstreamKey) -> Outcome:
    backend = key.backend
    path = backend.health_check_path or DEFAULT_PATH
    url = backend.base_url.rstrip("/") + "/" + path.lstrip("/")
    started = time.perf_counter()
    try:
        with requests.get(url, headers=auth_headers(backend.kind, box().decrypt(key.secret_encrypted)),
                          timeout=TIMEOUT, allow_redirects=False, stream=True) as response:
            status = response.status_code  # the body is deliberately left unread
    except requests.Timeout:
        return Outcome(False, None, _ms(started), "timed out")
    except requests.RequestException as exc:
        return Outcome(False, None, _ms(started), f"connection failed ({type(exc).__name__})")
    return Outcome(200 <= status < 300, status, _ms(started))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
