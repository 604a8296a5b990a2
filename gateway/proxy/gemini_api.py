"""Google's Gemini API on ``kind=gemini`` backends: ``/v1beta/models/{model}:generateContent``,
``:streamGenerateContent`` (``alt=sse``, or Google's JSON-array stream without it),
``:countTokens``, and the model list ``GET /v1beta/models[/{model}]``. The same methods
under ``/v1/models/...`` (the stable version, google-genai 3.x's default) are served
alike and forwarded to the same version upstream; the model list is ``v1beta`` only
(``GET /v1/models`` is OpenAI's).

The request flow is ``routes.proxy_llm``'s, step for step (see docs/architecture.md,
Request flow); what differs is where Gemini puts things:

- the model is in the path (``models/{model}:{method}``), not the body, so it is parsed
  from the path and the upstream URL is built from the routed (alias-rewritten) name;
- the client key may come in ``x-goog-api-key`` or the ``key`` query parameter
  (``key_rules``); neither reaches the upstream: it gets the pooled secret as
  ``x-goog-api-key`` (``forward.credential_headers``) and the client's query string
  without ``key``/``access_token``;
- the output cap is ``generationConfig.maxOutputTokens`` and the number of choices
  ``generationConfig.candidateCount``; Google's JSON parser also takes the proto names
  (``generation_config.max_output_tokens``), so both spellings are read - a client could
  otherwise reserve by one and be served by the other - and a body with both is refused;
- ``countTokens`` is charged nothing: no tokens reserved (tpm or quota), zero recorded
  (the request itself counts like any request);
- errors, also mid-stream, are Google's ``{"error": {"code", "message", "status"}}``.
"""
from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import quote

import requests
from flask import Response, current_app, jsonify, request

from ..addresses import client_ip
from ..errors import ApiError
from ..extensions import db
from ..requestid import current_request_id
from ..timeutil import utcnow
from ..worker_state import worker_state
from . import bp, forward, inbound, outbound, pool, quota, rate_checks, routing
from .accounting import RequestOutcome, record_usage
from .relay import CountingParser, RelayPlan, relay
from .routes import STREAM_HEADERS, _pass_error, admit
from .usage_parser import Usage, UsageParser, estimate_request_tokens

KINDS = ("gemini",)
METHODS = ("generateContent", "streamGenerateContent", "countTokens")
# Google's model ids (gemini-2.5-flash, gemini-2.0-flash-001, gemma-3-27b-it, ...): the
# name goes into the upstream URL path, so nothing else is accepted.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,199}")
# Query parameters that carry a client credential: never sent upstream.
MAX_CANDIDATES = 8
# camelCase (proto3 JSON) and the proto field names, which Google's parser accepts alike.
CONFIG_FIELDS = ("generationConfig", "generation_config")
CAP_FIELDS = ("maxOutputTokens", "max_output_tokens")
CANDIDATE_FIELDS = ("candidateCount", "candidate_count")


class NoChargeParser(CountingParser):
    """``countTokens``: its answer is a count, not usage; zero tokens reported (not an
    estimate) so nothing is charged against the quota."""

    def __init__(self) -> None:
        super().__init__()
        self.usage = Usage(reported=True)


def parse_target(target: str) -> tuple[str, str]:
    """``{model}:{method}`` from the path after ``/v1beta/models/``; 400 for a model name
    that could not be one, 404 for a method the gateway does not serve."""
    model, sep, method = target.rpartition(":")
    if not sep or method not in METHODS:
        raise ApiError(404, f"Method '{(method or target)[:64]}' is not served; KeyGate serves "
                            + ", ".join(METHODS), code="not_found")
    if model.startswith("models/"):
        model = model[len("models/"):]
    return model_name(model), method


def model_name(model: str) -> str:
    if not MODEL_NAME.fullmatch(model):
        raise ApiError(400, "The model in the path must be a model name such as gemini-2.5-flash",
                       code="invalid_model")
    return model


def _one_of(body: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The value under either spelling of a field; 400 when both are given."""
    present = [name for name in names if body.get(name) is not None]
    if len(present) > 1:
        raise ApiError(400, f"Give '{names[0]}' or '{names[1]}', not both", code="invalid_value", param=names[0])
    return body[present[0]] if present else None


def generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config = _one_of(body, CONFIG_FIELDS)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ApiError(400, "'generationConfig' must be an object", code="invalid_value", param="generationConfig")
    return config


def _count(config: dict[str, Any], names: tuple[str, ...], most: int) -> int | None:
    value = _one_of(config, names)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > most:
        raise ApiError(400, f"'generationConfig.{names[0]}' must be an integer from 1 to {most}",
                       code="invalid_value", param=f"generationConfig.{names[0]}")
    return value


def output_cap(config: dict[str, Any]) -> int | None:
    """``maxOutputTokens`` as the client sent it (None when absent)."""
    return _count(config, CAP_FIELDS, 10_000_000)


def candidate_count(config: dict[str, Any]) -> int:
    return _count(config, CANDIDATE_FIELDS, MAX_CANDIDATES) or 1


def upstream_body(body: dict[str, Any], method: str, cap: int) -> bytes:
    """Forbidden fields dropped and, for a generation without a client cap, the reserved
    output budget as ``maxOutputTokens`` (else the reservation would bound nothing)."""
    clean = forward.sanitize_body(body)
    if method != "countTokens" and cap > 0:
        name = next((n for n in CONFIG_FIELDS if clean.get(n) is not None), CONFIG_FIELDS[0])
        config = dict(clean.get(name) or {})
        if all(config.get(field) is None for field in CAP_FIELDS):
            config[CAP_FIELDS[0] if name == CONFIG_FIELDS[0] else CAP_FIELDS[1]] = cap
            clean[name] = config
    return json.dumps(clean, separators=(",", ":")).encode()


def upstream_query(raw: bytes) -> str:
    """The client's query string for the upstream (``?...`` or empty), without credential
    parameters (``key``, ``access_token``: the one rule of ``outbound.query_string``)."""
    kept = outbound.query_string(raw)
    return "?" + kept if kept else ""


@bp.post("/v1beta/models/<path:target>")
def gemini_method(target: str) -> Response:
    return proxy_gemini(target, "v1beta")


@bp.post("/v1/models/<path:target>")
def gemini_v1_method(target: str) -> Response:
    return proxy_gemini(target, "v1")


def _card(model: str, backend: str) -> dict[str, Any]:
    """A Gemini ``Model`` for the list; token limits are the provider's, not known here."""
    return {"name": f"models/{model}", "baseModelId": model, "version": "keygate", "displayName": model,
            "description": f"Served through KeyGate by backend {backend}",
            "supportedGenerationMethods": list(METHODS)}


@bp.get("/v1beta/models")
def gemini_models() -> Response:
    """The models this key may use on Gemini backends (concrete names and aliases;
    patterns cannot be listed), in one page."""
    state = worker_state()
    caller, headers = admit(state, query_key=True)
    models = [_card(model, backend) for model, backend in
              routing.listed_models(state.snapshot.backends, caller, KINDS)]
    response = jsonify({"models": models})
    response.headers.update(headers)
    return response


@bp.get("/v1beta/models/<path:name>")
def gemini_model(name: str) -> Response:
    """One model: any name that routes for this key, a pattern match included."""
    state = worker_state()
    caller, headers = admit(state, query_key=True)
    model = model_name(name[len("models/"):] if name.startswith("models/") else name)
    route = routing.routes_for(state.snapshot.backends, caller, model, KINDS)[0]
    response = jsonify(_card(model, route.backend_name))
    response.headers.update(headers)
    return response


def proxy_gemini(model_method: str, version: str) -> Response:
    """``routes.proxy_llm`` for the Gemini API (same steps, Gemini's places for model,
    cap, key and errors); ``model_method`` is the path's ``{model}:{method}``, read after
    the address limit like any request content; ``version`` the API version, kept upstream."""
    started = time.monotonic()
    state = worker_state()
    caller, limit_headers = admit(state, query_key=True)
    model, method = parse_target(model_method)
    raw = inbound.read_body()
    body = inbound.parse_json_object(raw)
    counting = method == "countTokens"
    streamed = method == "streamGenerateContent"
    sse = streamed and request.args.get("alt") == "sse"
    config = {} if counting else generation_config(body)
    max_tokens = None if counting else output_cap(config)
    choices = 1 if counting else candidate_count(config)
    routes = routing.routes_for(state.snapshot.backends, caller, model, KINDS)
    out = RequestOutcome(request_id=current_request_id(), route=request.path, client_ip=client_ip(),
                         user_id=caller.user_id, key_id=caller.key_id, model=model, streamed=streamed,
                         bytes_in=len(raw), tpm=caller.tpm, family="gemini")
    estimate_in = 0 if counting else estimate_request_tokens("gemini", body)
    if not counting:
        worst_output = max_tokens if max_tokens is not None else current_app.config["DEFAULT_MAX_TOKENS_RESERVE"]
        out.tpm_hold = rate_checks.reserve_tokens(state, caller, estimate_in + worst_output * choices)
    try:
        held = quota.reserve(caller, out.request_id, estimate_in, 0 if counting else max_tokens, len(raw),
                             choices=choices)
    except ApiError:
        rate_checks.give_back(state.storage, out.tpm_hold)
        raise
    engine = db.engine
    targets: list[pool.Target] = []
    query = upstream_query(request.query_string)
    accept = request.headers.get("Accept", "*/*")
    try:
        targets, soonest = pool.candidates(state, routes)
        if not targets:
            retry = {"Retry-After": str(max(1, int((soonest - utcnow()).total_seconds()) + 1))} if soonest else {}
            raise ApiError(503, "No healthy upstream key is available for this model; retry shortly",
                           code="no_healthy_upstream", headers=retry)
        payload = upstream_body(body, method, held.output_per_choice)

        def send(target: pool.Target) -> requests.Response:
            route = target.route
            name = quote(route.upstream_model or model, safe="@-._~")
            headers = {"Content-Type": "application/json", "Accept": accept, "X-Request-ID": out.request_id,
                       **forward.credential_headers(route.kind, target.secret, {})}
            timeout = (route.connect_timeout or current_app.config["UPSTREAM_CONNECT_TIMEOUT"],
                       route.read_timeout or current_app.config["UPSTREAM_READ_TIMEOUT"])
            return forward.post(f"{route.base_url}/{version}/models/{name}:{method}{query}", payload,
                                headers, timeout)

        attempted = forward.open_upstream(state, engine, targets, send, current_app.config["UPSTREAM_MAX_ATTEMPTS"])
    except ApiError as error:
        if targets and error.status in (502, 504):
            out.backend_id = targets[0].route.backend_id
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
        return _pass_error(state, engine, "gemini", upstream, target, out, held, limit_headers, started)
    parser: UsageParser | CountingParser = NoChargeParser() if counting else UsageParser("gemini", streaming=sse)
    plan = RelayPlan(state=state, engine=engine, outcome=out, held=held, family="gemini" if sse else "gemini_json",
                     started=started, drain_seconds=current_app.config["DISCONNECT_DRAIN_SECONDS"],
                     estimate_in=estimate_in, budget=quota.byte_budget(engine, caller, held, counted=len(raw)),
                     renewal=quota.renewal(engine, held), secret=target.secret)
    headers = {**limit_headers, "X-Request-ID": out.request_id}
    if streamed:
        headers.update(STREAM_HEADERS)
    content_type = upstream.headers.get("Content-Type") or ("text/event-stream" if sse else "application/json")
    return Response(relay(upstream, parser, plan), status=upstream.status_code, headers=headers,
                    content_type=content_type, direct_passthrough=True)
