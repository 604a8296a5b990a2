"""The proxied LLM endpoints. ``proxy_llm`` is the request flow, its steps in the order
they run (see docs/architecture.md, Request flow):

1. address limit - the global cap and the client address's limit (``rate_checks.check_address``),
   before anything else, so key guessing and malformed requests are counted too;
2. snapshot refresh - the worker's snapshot of keys, backends and the pool re-reads the
   generation counters when it is older than CACHE_REFRESH_SECONDS (``snapshot``);
3. authenticate - failed-authentication throttle per address, then the key (``authenticate``);
4. note the caller - tier and key prefix for the request's metrics and log line (``note_caller``);
5. key limits - rpm, rpd of the tier, per user (``rate_checks.check``);
6. read the body (``inbound``);
7. route - which backends serve the model for this caller (``routing``);
8. reserve - the worst case in the user's tpm window (``rate_checks.reserve_tokens``), then
   in the quota, or 429/402 (``quota``);
9. choose the upstream key (``pool``);
10. forward, failing over between keys before the first byte (``forward``);
11. relay and account - stream the answer, then record usage exactly once (``relay``,
    ``accounting``), after the request context is gone.

The pass-through (``passthrough``) and ``GET /v1/models`` run steps 1-5 the same way."""
from __future__ import annotations

import json
import time
from typing import Any

import requests
from flask import Response, current_app, jsonify, request
from sqlalchemy.engine import Engine

from ..addresses import client_ip
from ..errors import ApiError, render
from ..extensions import db
from ..observability.events import note_caller
from ..requestid import current_request_id
from ..timeutil import utcnow
from ..worker_state import WorkerState, worker_state
from . import bp, forward, inbound, pool, quota, rate_checks, routing
from .accounting import RequestOutcome, record_usage
from .authenticate import Caller, authenticate
from .relay import RelayPlan, relay
from .upstream_errors import clean_error
from .usage_parser import UsageParser, estimate_request_tokens

STREAM_HEADERS = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}

# route name -> (family, backend kinds, upstream path appended to base_url, needs max_tokens)
ENDPOINTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "chat": ("openai", ("openai",), "/chat/completions"),
    "completions": ("openai", ("openai",), "/completions"),
    "embeddings": ("openai", ("openai",), "/embeddings"),
    "messages": ("anthropic", ("anthropic",), "/v1/messages"),
    "count_tokens": ("anthropic", ("anthropic",), "/v1/messages/count_tokens"),
}


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    return proxy_llm("chat")


@bp.post("/v1/completions")
def completions() -> Response:
    return proxy_llm("completions")


@bp.post("/v1/embeddings")
def embeddings() -> Response:
    return proxy_llm("embeddings")


@bp.post("/v1/messages")
def messages() -> Response:
    return proxy_llm("messages")


@bp.post("/v1/messages/count_tokens")
def count_tokens() -> Response:
    return proxy_llm("count_tokens")


def admit(state: WorkerState, query_key: bool = False) -> tuple[Caller, dict[str, str]]:
    """Steps 1-5 of every proxy view: address limit, snapshot refresh, authentication,
    note the caller, key limits. Returns the caller and its rate-limit headers.
    ``query_key``: the key may also come from ``?key=`` (Gemini routes only)."""
    rate_checks.check_address(state)
    state.snapshot.refresh(db.engine, current_app.config["CACHE_REFRESH_SECONDS"])
    caller = authenticate(state, query_key)
    note_caller(caller)
    return caller, rate_checks.check(state, caller)


@bp.get("/v1/models")
def list_models() -> Response:
    state = worker_state()
    caller, headers = admit(state)
    created = int(time.time())
    data = [{"id": model, "object": "model", "created": created, "owned_by": backend}
            for model, backend in routing.listed_models(state.snapshot.backends, caller)]
    response = jsonify({"object": "list", "data": data})
    response.headers.update(headers)
    return response


# The output-cap field(s) each route's upstream honours; the first is the one the
# gateway sets when the client sent none (OpenAI chat's current name; reasoning models
# refuse the deprecated max_tokens).
UPSTREAM_CAP_FIELDS: dict[str, tuple[str, ...]] = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "messages": ("max_tokens",),
}


def _prepare_body(name: str, body: dict[str, Any], upstream_model: str | None,
                  output_cap: int = 0) -> tuple[bytes, bool]:
    """The upstream body: forbidden fields dropped, alias rewritten, usage requested,
    and the reserved output budget as the upstream's cap when the client gave none
    (without it the reservation would bound nothing). Returns (bytes, strip_usage_chunk)."""
    clean = forward.sanitize_body(body)
    if upstream_model:
        clean["model"] = upstream_model
    fields = UPSTREAM_CAP_FIELDS.get(name, ())
    if fields and output_cap > 0 and not any(clean.get(field) is not None for field in fields):
        clean[fields[0]] = output_cap
    strip = False
    if name in ("chat", "completions") and clean.get("stream") is True:
        options = clean.get("stream_options")
        if not isinstance(options, dict):
            options = {}
        if options.get("include_usage") is not True:
            strip = True
            clean["stream_options"] = {**options, "include_usage": True}
    return json.dumps(clean, separators=(",", ":")).encode(), strip


def proxy_llm(name: str) -> Response:
    family, kinds, upstream_path = ENDPOINTS[name]
    started = time.monotonic()
    state = worker_state()
    caller, limit_headers = admit(state)
    raw = inbound.read_body()
    body = inbound.parse_json_object(raw)
    model = inbound.model_of(body)
    streamed = name not in ("embeddings", "count_tokens") and inbound.wants_stream(body)
    max_tokens = inbound.max_tokens_of(body) if name not in ("embeddings", "count_tokens") else 0
    choices = inbound.choices_of(body) if name in ("chat", "completions") else 1
    routes = routing.routes_for(state.snapshot.backends, caller, model, kinds)
    out = RequestOutcome(request_id=current_request_id(), route=request.path, client_ip=client_ip(),
                  user_id=caller.user_id, key_id=caller.key_id, model=model, streamed=streamed,
                  bytes_in=len(raw), tpm=caller.tpm, family=family)
    estimate_in = estimate_request_tokens(family, body)
    worst_output = (max_tokens if max_tokens is not None else current_app.config["DEFAULT_MAX_TOKENS_RESERVE"])
    out.tpm_hold = rate_checks.reserve_tokens(state, caller, estimate_in + worst_output * choices)
    try:
        held = quota.reserve(caller, out.request_id, estimate_in, max_tokens, len(raw), choices=choices)
    except ApiError:
        rate_checks.give_back(state.storage, out.tpm_hold)
        raise
    engine = db.engine
    targets: list[pool.Target] = []
    try:
        targets, soonest = pool.candidates(state, routes)
        if not targets:
            # Retry-After only when a cooldown end is known; every key disabled has none.
            retry = {"Retry-After": str(max(1, int((soonest - utcnow()).total_seconds()) + 1))} if soonest else {}
            raise ApiError(503, "No healthy upstream key is available for this model; retry shortly",
                           code="no_healthy_upstream", headers=retry)
        client_headers = {k.lower(): v for k, v in request.headers.items()}
        bodies: dict[int, tuple[bytes, bool]] = {}

        def send(target: pool.Target) -> requests.Response:
            route = target.route
            if route.backend_id not in bodies:
                bodies[route.backend_id] = _prepare_body(name, body, route.upstream_model, held.output_per_choice)
            payload = bodies[route.backend_id][0]
            headers = {"Content-Type": "application/json", "Accept": client_headers.get("accept", "*/*"),
                       "X-Request-ID": out.request_id,
                       **forward.credential_headers(route.kind, target.secret, client_headers)}
            timeout = (route.connect_timeout or current_app.config["UPSTREAM_CONNECT_TIMEOUT"],
                       route.read_timeout or current_app.config["UPSTREAM_READ_TIMEOUT"])
            return forward.post(route.base_url + upstream_path, payload, headers, timeout)

        attempted = forward.open_upstream(state, engine, targets, send, current_app.config["UPSTREAM_MAX_ATTEMPTS"])
    except ApiError as error:
        if targets and error.status in (502, 504):
            out.backend_id = targets[0].route.backend_id  # the failed provider, for logs and metrics
        out.status, out.outcome, out.count_request = error.status, "rejected", False
        out.error_type = error.code
        out.latency_ms = (time.monotonic() - started) * 1000
        record_usage(state, engine, out, held)
        raise
    target, upstream = attempted.target, attempted.response
    out.backend_id, out.upstream_key_id = target.route.backend_id, target.key_id
    out.status = upstream.status_code
    out.prices = target.route.prices
    if upstream.status_code >= 400:
        return _pass_error(state, engine, family, upstream, target, out, held, limit_headers, started)
    strip = bodies[target.route.backend_id][1]
    parser = UsageParser(family, streaming=streamed, strip_usage_chunk=strip)
    plan = RelayPlan(state=state, engine=engine, outcome=out, held=held, family=family, started=started,
                     drain_seconds=current_app.config["DISCONNECT_DRAIN_SECONDS"], estimate_in=estimate_in,
                     budget=quota.byte_budget(engine, caller, held, counted=len(raw)),
                     renewal=quota.renewal(engine, held), secret=target.secret)
    headers = {**limit_headers, "X-Request-ID": out.request_id}
    if streamed:
        headers.update(STREAM_HEADERS)
    content_type = upstream.headers.get("Content-Type") or ("text/event-stream" if streamed else "application/json")
    return Response(relay(upstream, parser, plan), status=upstream.status_code, headers=headers,
                    content_type=content_type, direct_passthrough=True)


def _pass_error(state: WorkerState, engine: Engine, family: str, upstream: requests.Response, target: pool.Target,
                out: RequestOutcome, held: quota.Held | None, limit_headers: dict[str, str],
                started: float) -> Response:
    """A non-retryable upstream error (400, 404, 422...): the caller's mistake, passed
    through with its status, its body cleaned so it can never echo our upstream secret."""
    try:
        content = upstream.raw.read(65536, decode_content=True) or b""
    except Exception:  # a broken error body is still an error answer
        content = b""
    finally:
        upstream.close()
    out.bytes_out = len(content)
    out.outcome, out.error_type = "upstream_error", f"upstream_{upstream.status_code}"
    out.upstream_ok = True
    out.latency_ms = (time.monotonic() - started) * 1000
    record_usage(state, engine, out, held)
    error = clean_error(upstream.status_code, content, target.secret)
    response = render(family, error)
    response.headers.update(limit_headers)
    return response
