"""Warn when the gateway sits behind a proxy it does not trust (issue 15, finding 10).

With ``TRUSTED_PROXY_COUNT=0`` behind nginx, every client has nginx's address: one
client's failed keys throttle everyone (per-address limits, the failed-authentication
throttle), and IP allow-lists see only the proxy. The symptom is visible per request: a
loopback peer that sends ``X-Forwarded-For``. Each worker counts such requests, logs a
warning the first time, and ``/ready`` reports it as a warning (not a failure: the
gateway works, it just counts every client as one).

Installed only when ``TRUSTED_PROXY_COUNT`` is 0, so a correctly configured gateway pays
nothing per request; the count lives in WorkerState (``forwarding``).
"""
from __future__ import annotations

import ipaddress
import logging

from flask import Flask, request

log = logging.getLogger("gateway.forwarding")

MESSAGE = ("requests arrive from a loopback proxy with X-Forwarded-For while TRUSTED_PROXY_COUNT=0: "
           "every client is counted as the proxy's address; set TRUSTED_PROXY_COUNT=1 behind the shipped nginx")


class ForwardingCheck:
    """Per-worker: how many untrusted forwarded requests were seen."""

    def __init__(self) -> None:
        self.seen = 0

    def note(self) -> None:
        self.seen += 1
        if self.seen == 1:
            log.warning(MESSAGE)

    def warnings(self) -> list[dict[str, object]]:
        """For ``/ready``: empty, or one entry naming the problem."""
        if not self.seen:
            return []
        return [{"code": "untrusted_forwarding", "message": MESSAGE, "requests": self.seen}]


def _loopback(address: str | None) -> bool:
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped:
        parsed = parsed.ipv4_mapped
    return parsed.is_loopback


def init_app(app: Flask) -> None:
    if app.config["TRUSTED_PROXY_COUNT"]:
        return
    from .worker_state import state_of

    check = state_of(app).forwarding

    @app.before_request
    def _untrusted_forwarding() -> None:
        if "X-Forwarded-For" in request.headers and _loopback(request.remote_addr):
            check.note()
