"""Forward to the upstream, failing over between keys before the first byte (the
request-flow step after choosing the upstream key).

The client's credentials, address and hop-by-hop headers never go upstream
(``outbound``, the one list of those rules); the upstream
credential is set in the form the backend kind needs; redirects are never followed
(a redirect could carry our credential to another host); one pooled
``requests.Session`` per worker (in the app's ``WorkerState``) reuses connections and
never stores a cookie (``NeverStoredCookies``).
"""
from __future__ import annotations

import functools
import http.cookiejar
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from flask import current_app
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar
from sqlalchemy.engine import Engine

from ..errors import ApiError
from ..observability import metrics
from ..worker_state import WorkerState, worker_state
from . import fault, outbound, pool, url_safety
from .pool import Target
from .upstream_errors import clean_error

log = logging.getLogger("gateway.forward")

ANTHROPIC_PASS_HEADERS = ("anthropic-version", "anthropic-beta")
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
RETRYABLE_STATUSES = frozenset({401, 403, 408, 429, 500, 502, 503, 504, 529})


class _RefuseAll(http.cookiejar.DefaultCookiePolicy):
    """A cookie policy that accepts no cookie and returns none."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class NeverStoredCookies(RequestsCookieJar):
    """The worker's shared sessions carry every tenant's requests (pass-through, prober,
    test-connection): a cookie an upstream set for one request would be sent on the
    next one - another tenant's, or to another backend on the same host (issue 15,
    finding 1). This jar stores nothing, whichever way a cookie arrives (``Set-Cookie``
    through the policy, or ``set_cookie`` directly), so no upstream cookie outlives the
    request that received it; a backend with ``relay_cookies`` hands them to the client
    as response headers instead (``passthrough``)."""

    def __init__(self) -> None:
        super().__init__(policy=_RefuseAll())

    def set_cookie(self, cookie: http.cookiejar.Cookie, *args: Any, **kwargs: Any) -> None:
        return None


def session() -> requests.Session:
    """The worker's pooled HTTP session (created on first use, after gevent patched).
    With BLOCK_PRIVATE_UPSTREAMS its connections refuse non-public peer addresses at
    connect time (``url_safety``). Needs an app context."""
    guarded = bool(current_app.config["BLOCK_PRIVATE_UPSTREAMS"])
    state = worker_state()
    sessions = state.sessions
    s = sessions.get(guarded)
    if s is None:
        with state.lock:
            s = sessions.get(guarded)
            if s is None:
                s = requests.Session()
                s.trust_env = False  # no proxy or netrc from the environment
                s.cookies = NeverStoredCookies()  # shared by every tenant: it must never remember
                adapter_class = url_safety.GuardedAdapter if guarded else HTTPAdapter
                adapter = adapter_class(pool_connections=32, pool_maxsize=256, max_retries=0)
                s.mount("http://", adapter)
                s.mount("https://", adapter)
                sessions[guarded] = s
    return s


@functools.lru_cache(maxsize=10_000)
def _prepared_url(url: str) -> str:
    """``url`` normalised by requests (a pure function of the URL, so a memo)."""
    probe = requests.PreparedRequest()
    probe.prepare_url(url, None)
    return str(probe.url)


def post(url: str, body: bytes, headers: dict[str, str], timeout: tuple[float, float]) -> requests.Response:
    """POST ``body`` and return the streamed response, through the worker's session
    adapter (same pool, same connect-time guard, no redirects) but without
    ``Session.request``'s per-call merging of environment, cookies, hooks and settings,
    which was about a third of the forwarding CPU in the profile (bench/PROFILE.md).
    The URL is normalised by requests once per distinct URL; header values are checked
    as requests would (a CR/LF can never reach the wire), raising ``InvalidHeader``."""
    s = session()
    prepared_url = _prepared_url(url)
    prepared = requests.PreparedRequest()
    prepared.method = "POST"
    prepared.url = prepared_url
    prepared.prepare_headers(headers)
    prepared.headers["Content-Length"] = str(len(body))
    prepared.body = body
    return s.get_adapter(prepared_url).send(prepared, stream=True, timeout=timeout, verify=True, cert=None,
                                            proxies={})


class RetryBudget:
    """Failover retries may not exceed ``ratio`` x requests over a sliding minute, plus
    ``minimum`` per minute, per worker: when a provider is dying, every request would
    otherwise multiply its load by the attempt count exactly when it can least take it.
    Per worker on purpose - no shared storage on the hot path; N workers allow N x."""

    WINDOW = 60

    def __init__(self, ratio: float, minimum: int) -> None:
        self.ratio, self.minimum = ratio, minimum
        self._buckets: deque[list[int]] = deque()  # [second, requests, retries]
        self._lock = threading.Lock()

    def _bucket(self) -> list[int]:
        now = int(time.monotonic())
        while self._buckets and self._buckets[0][0] <= now - self.WINDOW:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != now:
            self._buckets.append([now, 0, 0])
        return self._buckets[-1]

    def record_request(self) -> None:
        with self._lock:
            self._bucket()[1] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is exhausted."""
        with self._lock:
            bucket = self._bucket()
            requests_seen = sum(b[1] for b in self._buckets)
            retries = sum(b[2] for b in self._buckets)
            if retries >= self.minimum + self.ratio * requests_seen:
                return False
            bucket[2] += 1
            return True


def retry_budget(state: WorkerState) -> RetryBudget:
    """The worker's retry budget for the current app's settings. Needs an app context."""
    config = current_app.config
    key = (float(config["UPSTREAM_RETRY_BUDGET_RATIO"]), int(config["UPSTREAM_RETRY_BUDGET_MIN"]))
    budget = state.budgets.get(key)
    if budget is None:
        with state.lock:
            budget = state.budgets.setdefault(key, RetryBudget(*key))
    return budget


def sanitize_body(body: dict[str, Any]) -> dict[str, Any]:
    """The LLM body without forbidden fields (the rule is ``outbound.sanitize_body``)."""
    return outbound.sanitize_body(body)


def credential_headers(kind: str, secret: str, client_headers: dict[str, str]) -> dict[str, str]:
    if kind == "anthropic":
        headers = {"x-api-key": secret}
        for name in ANTHROPIC_PASS_HEADERS:
            if client_headers.get(name):
                headers[name] = client_headers[name]
        headers.setdefault("anthropic-version", DEFAULT_ANTHROPIC_VERSION)
        return headers
    if kind == "gemini":
        # Google's header form, never the ``key`` query parameter (URLs end up in logs).
        return {"x-goog-api-key": secret} if secret else {}
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def passthrough_headers(client_headers: dict[str, str]) -> dict[str, str]:
    """End-to-end client headers for the generic pass-through, minus credentials,
    client-address and hop-by-hop headers (``outbound``)."""
    return outbound.forwardable_headers(client_headers.items())


@dataclass
class Attempted:
    target: Target
    response: requests.Response


@dataclass
class _Suspect:
    """A failed answer that may be the key's fault or the request's (``fault``)."""
    target: Target
    status: int | None
    error: str
    wait: float | None
    content: bytes

    @property
    def kind(self) -> str:
        return fault.failure_class(self.status)


def retry_after_of(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, min(float(value), 3600.0))
    except ValueError:
        return None


def _read_error(response: requests.Response) -> bytes:
    """At most ``fault.MAX_ERROR_BODY`` of an error body (what the fault rules and the
    client's error message need), then the response is closed (its connection is not
    reused: failures are rare, and an unbounded drain would let an upstream fill memory)."""
    try:
        return response.raw.read(fault.MAX_ERROR_BODY, decode_content=True) or b""
    except Exception:  # a broken error body is still an error answer
        return b""
    finally:
        response.close()


def _attempt_failed(target: Target, kind: str) -> None:
    metrics.UPSTREAM_ATTEMPT_FAILURES.labels(str(target.route.backend_id), kind).inc()


def _request_fault(suspect: _Suspect, max_cooldown: float) -> ApiError:
    """The client's answer when a failure is the request's own: the provider's refusal
    (cleaned of our secret) with its status for 403/429; a credential refusal or a server
    failure is not the client's credential or server, so 502/504 ``upstream_unavailable``."""
    pool.count("request_fault")
    if suspect.status in (403, 429):
        error = clean_error(suspect.status, suspect.content, suspect.target.secret)
        if suspect.status == 429:
            error.headers = {"Retry-After": str(int(min(suspect.wait or pool.DEFAULT_COOLDOWN_SECONDS,
                                                        max_cooldown)) + 1)}
        return error
    if suspect.status == 401:
        return ApiError(502, "The upstream provider refused this request", code="upstream_unavailable")
    if suspect.status in (None, 408, 504):
        return ApiError(504, "The upstream provider did not answer this request in time", code="upstream_unavailable")
    return ApiError(502, f"The upstream provider failed on this request (HTTP {suspect.status})",
                    code="upstream_unavailable")


def open_upstream(state: WorkerState, engine: Engine, targets: list[Target],
                  send: Callable[[Target], requests.Response], max_attempts: int,
                  budget: RetryBudget | None = None) -> Attempted:
    """Try ``targets`` in order until one answers something other than a key/provider
    failure. Nothing has reached the client yet, so retrying is safe (no duplicated
    output). Bounded by ``max_attempts`` and by the worker's retry budget. Raises
    ApiError when every attempt failed: 504 when the last one timed out, 503 with
    Retry-After when every key was rate limited, 502 otherwise.

    Who is blamed (``fault``): a connection failure is the key's/provider's at once (a
    request cannot choose it). A failed *answer* (401/403/429/5xx/read timeout) is only
    a suspect: blamed when another key serves the same request. When the next key
    fails the same way, failover stops; then, as when no other key could be asked, a
    content-free probe of the suspect key decides: it fails too - the key (or the whole
    provider) is at fault and the suspect alone is blamed; it passes - the request is,
    no key is blamed and the client gets the provider's answer. At most one key is
    blamed per request, and only a probe's own 401/403 disables one."""
    budget = budget or retry_budget(state)
    budget.record_request()
    max_cooldown = float(current_app.config["MAX_COOLDOWN_SECONDS"])
    last_status = 502
    last_message = "The upstream provider failed"
    retry_after: float | None = None
    suspect: _Suspect | None = None  # the first failed answer: blamed, or found to be the request's
    repeated: _Suspect | None = None  # the same class of failure on another key

    def blame(found: _Suspect) -> None:
        pool.report_failure(state, engine, found.target.key_id, found.status, found.error, found.wait,
                            max_cooldown=max_cooldown)

    for attempt, target in enumerate(targets[:max(1, max_attempts)], start=1):
        if attempt > 1:
            if not budget.try_spend():
                pool.count("retry_budget_exhausted")
                log.warning("failover retry budget exhausted; not retrying (last upstream status %s)", last_status)
                break
            pool.count("failover_retry")
        failed: _Suspect | None = None
        try:
            response = send(target)
        except requests.exceptions.InvalidHeader:
            # A header value the client sent (Accept, anthropic-*) cannot be forwarded:
            # the caller's mistake, not the key's or the provider's.
            raise ApiError(400, "A request header has a value that cannot be forwarded",
                           code="invalid_header") from None
        except requests.exceptions.ConnectTimeout:
            pool.report_failure(state, engine, target.key_id, None, "connect timeout")
            _attempt_failed(target, "connect_timeout")
            last_status, last_message = 504, "The upstream provider did not accept the connection in time"
            continue
        except requests.exceptions.ReadTimeout:
            # A long generation before the first byte is a request's doing too: a suspect.
            failed = _Suspect(target, None, "read timeout before first byte", None, b"")
            _attempt_failed(target, "read_timeout")
            last_status, last_message = 504, "The upstream provider did not answer in time"
        except requests.exceptions.RequestException as exc:
            if url_safety.blocked_cause(exc) is not None:
                # The backend's address, not the key, is the problem: no key is marked.
                pool.count("blocked_upstream_address")
                log.error("backend %s refused: its address is private/internal and BLOCK_PRIVATE_UPSTREAMS is on",
                          target.route.backend_name)
                last_status, last_message = 502, "The backend's address is not allowed (private or internal network)"
                _attempt_failed(target, "blocked_address")
                continue
            pool.report_failure(state, engine, target.key_id, None, f"connection error: {type(exc).__name__}")
            _attempt_failed(target, "connection_error")
            last_status, last_message = 502, "Could not connect to the upstream provider"
            continue
        if failed is None:
            status = response.status_code
            if 300 <= status < 400:
                # Never followed (it could carry our credential elsewhere) and never relayed:
                # an API endpoint that redirects is misconfigured, not a key problem.
                _read_error(response)  # bounded, unlike .content: a hostile redirect body can be huge
                pool.count("upstream_redirect_refused")
                log.error("backend %s answered a redirect (HTTP %s); redirects are not followed",
                          target.route.backend_name, status)
                last_status, last_message = 502, "The upstream provider answered with a redirect, which is not followed"
                _attempt_failed(target, "redirect")
                continue
            if status not in RETRYABLE_STATUSES:
                if suspect is not None:
                    blame(suspect)  # this request worked on another key: the suspect's failure was the key's
                return Attempted(target, response)
            wait = retry_after_of(response)
            failed = _Suspect(target, status, f"upstream answered {status}", wait, _read_error(response))
            _attempt_failed(target, f"status_{status}")
            if fault.says_request_fault(status, failed.content):
                raise _request_fault(failed, max_cooldown)  # the provider named the request: no failover
            if status == 429:
                last_status, last_message = 503, "Every upstream key is rate limited; retry shortly"
                clamped = min(wait, max_cooldown) if wait else None
                retry_after = clamped if retry_after is None else min(retry_after, clamped or retry_after)
            elif status in (401, 403):
                last_status, last_message = 502, "The upstream provider rejected the gateway's credential"
            elif status in (504, 408):
                last_status, last_message = 504, "The upstream provider timed out"
            else:
                last_status, last_message = 502, f"The upstream provider failed (HTTP {status})"
        if suspect is None:
            suspect = failed
        elif failed.kind == suspect.kind:
            # The same class of failure on a second key: it follows the request (or the
            # whole provider fails that way). A third key would only say it again.
            repeated = failed
            break
        # A different failure on the next key: keep failing over; only the first suspect
        # may be blamed (one request moves at most one key).
    if suspect is not None:
        from . import prober  # prober imports this module

        route = suspect.target.route
        opinion = prober.second_opinion(state, route.backend_id, suspect.target.key_id, suspect.target.secret,
                                        within=route.read_timeout or float(current_app.config["UPSTREAM_READ_TIMEOUT"]))
        if opinion is None or opinion.ok is not False:
            log.warning("upstream answered %s on key %s%s, and a content-free probe of that key %s: the request is "
                        "at fault, no key is blamed", suspect.status or "a timeout", suspect.target.key_id,
                        f" (and {repeated.status or 'a timeout'} on key {repeated.target.key_id})" if repeated else "",
                        "was inconclusive" if opinion is None or opinion.ok is None else "succeeded")
            raise _request_fault(repeated or suspect, max_cooldown)
        if opinion.status in (401, 403):
            # The gateway's own content-free request was refused: the credential is dead.
            pool.report_failure(state, engine, suspect.target.key_id, opinion.status, opinion.detail,
                                confirmed=True)
        else:
            blame(suspect)
    headers = {"Retry-After": str(int(retry_after) + 1)} if retry_after else {}
    if last_status == 503 and not headers:
        headers = {"Retry-After": str(pool.DEFAULT_COOLDOWN_SECONDS)}
    raise ApiError(last_status, last_message, code="upstream_unavailable", headers=headers)
