"""The generic HTTP pass-through, ``<PROXY_PREFIX>/<backend>/<path>``, for ``kind=http``
backends (an image service, a search API): request and response bodies stream both
ways, bytes in and out are counted against the byte quota.

The path can never leave the backend's base path: it is decoded once, every segment
checked (no ``.``/``..``, no empty segment, no backslash or NUL), then re-encoded
segment by segment, so ``..``, ``%2e%2e``, ``%2f`` and ``//host`` are all refused.
A streamed request body can be sent once only, so there is no failover here.

What the client sends loses its credentials, address and hop-by-hop headers and its
credential query parameters (``outbound``); the upstream is asked for plain bytes.
What comes back is scrubbed of the upstream secret, headers included (``scrub``).
Upstream cookies are never stored; with the backend's ``relay_cookies`` on, its
``Set-Cookie`` headers are handed to the client and the client's ``Cookie`` sent on,
KeyGate's own cookies removed both ways; off (the default), cookies are dropped.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote

import requests
from flask import Response, current_app, request
from flask.blueprints import BlueprintSetupState
from sqlalchemy.engine import Engine

from ..addresses import client_ip
from ..errors import ApiError
from ..extensions import db
from ..requestid import current_request_id
from ..timeutil import utcnow
from ..worker_state import WorkerState, worker_state
from . import bp, forward, inflate, outbound, pool, quota, routing, url_safety
from .accounting import RequestOutcome, record_usage
from .authenticate import Caller
from .relay import CountingParser, RelayPlan, relay
from .routes import admit
from .scrub import scrub_text

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
CHUNK = 64 * 1024
RESPONSE_HEADERS = ("content-type", "content-disposition", "cache-control", "etag", "last-modified")


def safe_path(path: str) -> str:
    """Re-encoded relative path, or 400 when it tries to escape the base path."""
    if path == "":
        return ""
    segments = path.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or "\\" in segment or "\x00" in segment:
            raise ApiError(400, "The path is not allowed", code="invalid_path")
    return "/".join(quote(segment, safe="") for segment in segments)


class _BodyStream:
    """Reads the client's body in chunks, counting bytes and enforcing the size limit
    and, as the bytes arrive (a chunked upload declares no length), the byte quota."""

    def __init__(self, limit: int, budget: quota.ByteBudget | None = None, caller: Caller | None = None):
        self.limit = limit
        self.count = 0
        self.budget = budget
        self.caller = caller

    def __iter__(self) -> Iterator[bytes]:
        stream = request.stream
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                return
            if self.count + len(chunk) > self.limit:
                self.count += len(chunk)
                raise ApiError(413, "Request body is too large", code="request_too_large")
            if self.budget is not None and self.caller is not None and not self.budget.take(len(chunk)):
                raise quota.byte_quota_error(self.caller, "the request body")  # this chunk is never sent
            self.count += len(chunk)
            yield chunk


def passthrough(backend: str, path: str = "") -> Response:
    started = time.monotonic()
    state = worker_state()
    caller, limit_headers = admit(state)  # address limit, snapshot refresh, authentication, key limits
    route = routing.passthrough_route(state.snapshot.backends, caller, backend)
    relative = safe_path(path)
    limit = current_app.config["MAX_BODY_BYTES"]
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, f"Request body is larger than the {limit}-byte limit", code="request_too_large")
    out = RequestOutcome(request_id=current_request_id(),
                         route=f"{current_app.config['PROXY_PREFIX']}/{route.backend_name}",
                         client_ip=client_ip(), user_id=caller.user_id, key_id=caller.key_id,
                         backend_id=route.backend_id, model=None, streamed=True, family="passthrough")
    held = quota.reserve(caller, out.request_id, 0, 0, length or 0)
    engine = db.engine
    targets, soonest = pool.candidates(state, [route])
    if not targets and state.snapshot.keys_of([route.backend_id]):
        # The backend has credentials and none is usable now: never call it without one.
        out.status, out.outcome, out.error_type = 503, "rejected", "no_healthy_upstream"
        _finish_failed(state, engine, out, held, started)
        retry = {"Retry-After": str(max(1, int((soonest - utcnow()).total_seconds()) + 1))} if soonest else {}
        raise ApiError(503, "No healthy upstream key is available for this backend; retry shortly",
                       code="no_healthy_upstream", headers=retry)
    target = targets[0] if targets else pool.Target(route, 0, "")  # a backend without credentials
    url = route.base_url + ("/" + relative if relative else "")
    query = outbound.query_string(request.query_string)
    if query:
        url += "?" + query
    headers = {name: value for name, value in forward.passthrough_headers(dict(request.headers)).items()
               if name.lower() != "accept-encoding"}
    headers["Accept-Encoding"] = "identity"  # the relay must read plain bytes to scrub them (``scrub``)
    own_cookies = _own_cookies()
    if route.relay_cookies and request.headers.get("Cookie"):
        cookie = outbound.forwarded_cookie(request.headers["Cookie"], own_cookies)
        if cookie:
            headers["Cookie"] = cookie
    headers.update(forward.credential_headers("http", target.secret, {}))
    headers["X-Request-ID"] = out.request_id
    budget = quota.byte_budget(engine, caller, held)
    body = _BodyStream(limit, budget, caller)
    has_body = request.method not in ("GET", "HEAD", "OPTIONS") or bool(length)
    timeout = (route.connect_timeout or current_app.config["UPSTREAM_CONNECT_TIMEOUT"],
               route.read_timeout or current_app.config["UPSTREAM_READ_TIMEOUT"])
    try:
        upstream = forward.session().request(request.method, url, data=iter(body) if has_body else None,
                                             headers=headers, timeout=timeout, stream=True, allow_redirects=False)
    except ApiError as error:
        out.status, out.outcome, out.bytes_in = error.status, "rejected", body.count
        _finish_failed(state, engine, out, held, started)
        raise
    except requests.exceptions.InvalidHeader:
        # A client header value that cannot be sent on: the caller's mistake, not the
        # upstream's (counting it against the key would let any client disable it).
        out.status, out.outcome, out.error_type, out.bytes_in = 400, "rejected", "invalid_header", body.count
        _finish_failed(state, engine, out, held, started)
        raise ApiError(400, "A request header has a value that cannot be forwarded", code="invalid_header") from None
    except Exception as exc:  # requests wraps most, but a broken body iterator can surface raw
        timeout_hit = isinstance(exc, requests.exceptions.Timeout)
        out.status = 504 if timeout_hit else 502
        out.outcome, out.error_type, out.bytes_in = "upstream_error", type(exc).__name__[:64], body.count
        if target.key_id and url_safety.blocked_cause(exc) is None:  # a refused address is not the key's fault
            pool.report_failure(state, engine, target.key_id, None, f"pass-through: {type(exc).__name__}")
        _finish_failed(state, engine, out, held, started)
        raise ApiError(out.status, "The upstream service timed out" if timeout_hit
                       else "Could not reach the upstream service", code="upstream_unavailable") from None
    out.bytes_in = body.count
    out.status = upstream.status_code
    out.upstream_key_id = target.key_id or None
    if not inflate.supported(upstream.headers.get("Content-Encoding")):
        # A coding the relay cannot decode could hide our secret from the scrubber.
        upstream.close()
        out.status, out.outcome, out.error_type = 502, "upstream_error", "content_encoding_refused"
        _finish_failed(state, engine, out, held, started)
        raise ApiError(502, "The upstream service answered in a content encoding the gateway does not relay",
                       code="upstream_unavailable")
    declared = _declared_length(upstream)
    if budget is not None and declared is not None and not budget.ensure(declared):
        # Known too large before the first byte: refuse cleanly instead of cutting it.
        upstream.close()
        out.status, out.outcome, out.error_type = 402, "quota_exceeded", "byte_quota_exceeded"
        _finish_failed(state, engine, out, held, started)
        raise quota.byte_quota_error(caller, f"the response of {declared} bytes")
    parser = CountingParser()
    plan = RelayPlan(state=state, engine=engine, outcome=out, held=held, family="http", started=started,
                     drain_seconds=0.0, estimate_in=0, budget=budget, renewal=quota.renewal(engine, held),
                     secret=target.secret)
    response_headers = [(name, scrub_text(value, target.secret)) for name, value in upstream.headers.items()
                        if name.lower() in RESPONSE_HEADERS]
    if route.relay_cookies:
        # Handed to the client, never stored (the session's jar keeps nothing): each
        # Set-Cookie separately, as the upstream sent them.
        response_headers += [("Set-Cookie", scrub_text(value, target.secret))
                             for value in upstream.raw.headers.getlist("Set-Cookie")
                             if outbound.relayable_set_cookie(value, own_cookies)]
    response_headers += list(limit_headers.items())
    response_headers.append(("X-Accel-Buffering", "no"))
    return Response(relay(upstream, parser, plan), status=upstream.status_code, headers=response_headers,
                    direct_passthrough=True)


def _own_cookies() -> tuple[str, str]:
    """KeyGate's own cookie names (portal session, remember-me): never sent to an
    upstream, never set by one."""
    config = current_app.config
    return (str(config.get("SESSION_COOKIE_NAME") or "session"),
            str(config.get("REMEMBER_COOKIE_NAME") or "remember_token"))


def _declared_length(upstream: requests.Response) -> int | None:
    """The response's Content-Length when it is a plain, unencoded length."""
    value = upstream.headers.get("Content-Length", "")
    if not value.isdigit() or upstream.headers.get("Content-Encoding"):
        return None
    return int(value)


def _finish_failed(state: WorkerState, engine: Engine, out: RequestOutcome, held: quota.Held,
                   started: float) -> None:
    out.count_request = False
    out.latency_ms = (time.monotonic() - started) * 1000
    record_usage(state, engine, out, held)


@bp.record_once
def _register(state: BlueprintSetupState) -> None:
    """The prefix is configuration, so the rule is added when the blueprint is bound."""
    app = state.app
    prefix = app.config["PROXY_PREFIX"]
    app.url_map.merge_slashes = False  # `//host` must reach safe_path, not be merged away
    app.add_url_rule(f"{prefix}/<backend>/", "proxy.passthrough_root", passthrough, methods=METHODS)
    app.add_url_rule(f"{prefix}/<backend>/<path:path>", "proxy.passthrough", passthrough, methods=METHODS)
    from .. import extensions

    extensions.csrf.exempt(passthrough)
