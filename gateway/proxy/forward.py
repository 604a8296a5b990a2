"""Step 7-8: forward to the upstream, failing over between keys before the first byte.

The client's credentials and hop-by-hop headers never go upstream; the upstream
credential is set in the form the backend kind needs; redirects are never followed
(a redirect could carry our credential to another host); one pooled
``requests.Session`` per worker reuses connections.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

import requests
from requests.adapters import HTTPAdapter
from sqlalchemy.engine import Engine

from ..errors import ApiError
from . import pool
from .pool import Target

log = logging.getLogger("gateway.forward")

# Body fields that would redirect or re-credential the upstream call (LiteLLM-style
# clients send some of these); they are dropped, never honoured.
FORBIDDEN_BODY_FIELDS = frozenset({
    "api_base", "base_url", "api_key", "api_type", "api_version", "organization", "custom_llm_provider",
    "headers", "extra_headers", "extra_query", "http_client", "proxy", "proxies", "azure_ad_token",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "vertex_credentials", "user_api_key",
})
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
})
CLIENT_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "openai-organization",
                                       "openai-project", "x-admin-key"})
ANTHROPIC_PASS_HEADERS = ("anthropic-version", "anthropic-beta")
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
RETRYABLE_STATUSES = frozenset({401, 403, 408, 429, 500, 502, 503, 504, 529})

_local = threading.local()
_session_lock = threading.Lock()
_session: requests.Session | None = None


def session() -> requests.Session:
    """The worker's pooled HTTP session (created on first use, after gevent patched)."""
    global _session
    if _session is None:
        with _session_lock:
            if _session is None:
                s = requests.Session()
                s.trust_env = False  # no proxy or netrc from the environment
                adapter = HTTPAdapter(pool_connections=32, pool_maxsize=256, max_retries=0)
                s.mount("http://", adapter)
                s.mount("https://", adapter)
                _session = s
    return _session


def sanitize_body(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in FORBIDDEN_BODY_FIELDS}


def credential_headers(kind: str, secret: str, client_headers: dict[str, str]) -> dict[str, str]:
    if kind == "anthropic":
        headers = {"x-api-key": secret}
        for name in ANTHROPIC_PASS_HEADERS:
            if client_headers.get(name):
                headers[name] = client_headers[name]
        headers.setdefault("anthropic-version", DEFAULT_ANTHROPIC_VERSION)
        return headers
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def passthrough_headers(client_headers: dict[str, str]) -> dict[str, str]:
    """End-to-end client headers for the generic pass-through, minus credentials."""
    return {name: value for name, value in client_headers.items()
            if name.lower() not in HOP_BY_HOP and name.lower() not in CLIENT_CREDENTIAL_HEADERS
            and not name.lower().startswith("x-forwarded-")}


@dataclass
class Attempted:
    target: Target
    response: requests.Response
    attempts: int


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, min(float(value), 3600.0))
    except ValueError:
        return None


def _drain_error(response: requests.Response) -> None:
    try:
        response.content  # bounded: provider error bodies are small; frees the connection
    except requests.RequestException:
        pass
    finally:
        response.close()


def open_upstream(engine: Engine, targets: list[Target], send: Callable[[Target], requests.Response],
                  max_attempts: int) -> Attempted:
    """Try ``targets`` in order until one answers something other than a key/provider
    failure. Nothing has reached the client yet, so retrying is safe. Raises ApiError
    (502/503/504) when every attempt failed."""
    last_status = 502
    last_message = "The upstream provider failed"
    retry_after: float | None = None
    for attempt, target in enumerate(targets[:max(1, max_attempts)], start=1):
        try:
            response = send(target)
        except requests.exceptions.ConnectTimeout:
            pool.report_failure(engine, target.key_id, None, "connect timeout")
            last_status, last_message = 504, "The upstream provider did not accept the connection in time"
            continue
        except requests.exceptions.ReadTimeout:
            pool.report_failure(engine, target.key_id, None, "read timeout before first byte")
            last_status, last_message = 504, "The upstream provider did not answer in time"
            continue
        except requests.exceptions.RequestException as exc:
            pool.report_failure(engine, target.key_id, None, f"connection error: {type(exc).__name__}")
            last_status, last_message = 502, "Could not connect to the upstream provider"
            continue
        status = response.status_code
        if status not in RETRYABLE_STATUSES:
            return Attempted(target, response, attempt)
        wait = _retry_after(response)
        _drain_error(response)
        pool.report_failure(engine, target.key_id, status, f"upstream answered {status}", wait)
        if status == 429:
            last_status, last_message = 503, "Every upstream key is rate limited; retry shortly"
            retry_after = wait if retry_after is None else min(retry_after, wait or retry_after)
        elif status in (401, 403):
            last_status, last_message = 502, "The upstream provider rejected the gateway's credential"
        elif status in (504, 408):
            last_status, last_message = 504, "The upstream provider timed out"
        else:
            last_status, last_message = 502, f"The upstream provider failed (HTTP {status})"
    headers = {"Retry-After": str(int(retry_after) + 1)} if retry_after else {}
    if last_status == 503 and not headers:
        headers = {"Retry-After": str(pool.DEFAULT_COOLDOWN_SECONDS)}
    raise ApiError(last_status, last_message, code="upstream_unavailable", headers=headers)
