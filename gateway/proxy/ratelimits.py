"""Step 3: rate limits, checked after authentication so the per-key limit can use the
caller's tier. All limits live in the Flask-Limiter storage (memcached in production),
so they hold across workers and hosts. Stacked on purpose, cheapest to reject first:

    global cap (GLOBAL_RPM) -> per client address (IP_RPM) -> per key (tier rpm, rpd)

Storage failure policy: fail open by default (RATELIMIT_FAIL_OPEN=true) - quotas in
the database still bound spending - or closed (503). Logged once per outage.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flask import current_app
from limits import RateLimitItem, parse as parse_limit

from ..errors import ApiError
from ..ratelimit import client_ip, limiter
from .authenticate import Caller

log = logging.getLogger("gateway.ratelimit")
_items: dict[str, RateLimitItem] = {}
_storage_down_since: float | None = None


@dataclass(frozen=True)
class LimitState:
    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(self.reset)}


def _item(text: str) -> RateLimitItem:
    item = _items.get(text)
    if item is None:
        item = _items[text] = parse_limit(text)
    return item


def _storage_failed(exc: Exception) -> None:
    global _storage_down_since
    if _storage_down_since is None:
        _storage_down_since = time.monotonic()
        log.error("rate-limit storage unavailable (%s); failing %s", type(exc).__name__,
                  "open" if current_app.config["RATELIMIT_FAIL_OPEN"] else "closed")
    if not current_app.config["RATELIMIT_FAIL_OPEN"]:
        raise ApiError(503, "Rate limiting is unavailable; retry shortly", code="ratelimit_unavailable",
                       headers={"Retry-After": "5"})


def _storage_ok() -> None:
    global _storage_down_since
    if _storage_down_since is not None:
        log.warning("rate-limit storage recovered after %.1fs", time.monotonic() - _storage_down_since)
        _storage_down_since = None


def _hit(name: str, text: str, identity: str) -> LimitState | None:
    item = _item(text)
    strategy = limiter.limiter
    try:
        allowed = strategy.hit(item, name, identity)
        reset, remaining = strategy.get_window_stats(item, name, identity)
    except Exception as exc:  # any storage error: policy decides
        _storage_failed(exc)
        return None
    _storage_ok()
    state = LimitState(item.amount, max(0, remaining), int(reset))
    if not allowed:
        retry = max(1, int(reset - time.time()) + 1)
        raise ApiError(429, f"Rate limit exceeded: {name} allows {text.replace('/', ' per ')}; "
                            f"retry in {retry} s", code=f"rate_limit_{name.replace('-', '_')}",
                       headers={**state.headers(), "Retry-After": str(retry)})
    return state


def check(caller: Caller) -> dict[str, str]:
    """Count this request against every limit; raise 429 on the first one exceeded.
    Returns the per-key limit headers for the response."""
    config = current_app.config
    _hit("global", f"{config['GLOBAL_RPM']}/minute", "all")
    _hit("ip", f"{config['IP_RPM']}/minute", client_ip())
    key_state = _hit("key", f"{caller.rpm}/minute", str(caller.key_id))
    if caller.rpd:
        _hit("key-day", f"{caller.rpd}/day", str(caller.key_id))
    return key_state.headers() if key_state else {}
