"""The OpenAI Responses API on ``kind=openai`` backends (issue 16): ``POST /v1/responses``
(JSON or SSE) and the follow-ups on a stored response, ``GET``/``DELETE
/v1/responses/{id}``, ``POST /v1/responses/{id}/cancel`` and ``GET
/v1/responses/{id}/input_items``.

``create`` runs the request flow of ``routes.proxy_llm`` step for step (admit, read the
body, route, reserve, choose, forward, relay and account); only what the Responses API
needs differently lives here:

- the output cap is ``max_output_tokens``; absent, the reserved budget is sent as it, so
  the reservation bounds the output as on chat;
- usage is read by the ``responses`` family of ``usage_parser`` (``response.completed``
  / ``response.incomplete`` / ``response.failed``, or the document's ``usage``), and a
  mid-stream failure ends with a Responses ``error`` event (``relay.error_event``);
- a stored response lives at the one provider account (upstream key) that created it.
  Its id is read from ``response.created`` (or the document) and recorded in
  ``stored_responses`` with the backend, the upstream key and the owner *before* the
  client can see it (a stream's event is held until the row is written; a document's
  last chunk is), so a follow-up that races the end of the stream still finds it.
  Follow-ups and ``previous_response_id`` go to that key, bypassing the pool choice
  (it is the only one that can answer), and only the owning user reaches them: any
  other caller gets the same 404 as for an id that never existed.

Refused with a 400 naming the field, because the gateway could not keep its promises
with them: ``background: true`` (the create answers before any usage exists, so the
tokens could never be accounted) and ``conversation`` (a provider-side object KeyGate
cannot attribute to an owner). Everything else in the body passes through untouched
apart from the forbidden fields every route drops (``forward.sanitize_body``).
See docs/architecture.md, Request flow.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests
from flask import Response, current_app, request
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..addresses import client_ip
from ..errors import ApiError
from ..extensions import db
from ..models import StoredResponse
from ..requestid import current_request_id
from ..timeutil import utcnow
from ..worker_state import WorkerState, worker_state
from . import bp, forward, inbound, outbound, pool, quota, rate_checks, routing
from .accounting import RequestOutcome, record_usage
from .authenticate import Caller
from .relay import CountingParser, RelayPlan, relay
from .routes import STREAM_HEADERS, _pass_error, admit
from .usage_parser import UsageParser, estimate_request_tokens

log = logging.getLogger("gateway.responses")

PARSER_FAMILY = "responses"  # usage parser and in-band error shape; the route family is "openai"
ROUTE_FAMILY = "openai"
KINDS = ("openai",)
UPSTREAM_PATH = "/responses"
CAP_FIELD = "max_output_tokens"
RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_stored = StoredResponse.__table__


@bp.post("/v1/responses")
def create() -> Response:
    started = time.monotonic()
    state = worker_state()
    caller, limit_headers = admit(state)
    raw = inbound.read_body()
    body = inbound.parse_json_object(raw)
    model = inbound.model_of(body)
    streamed = inbound.wants_stream(body)
    max_tokens = inbound.max_tokens_of(body)
    _refuse_unsupported(body)
    routes = routing.routes_for(state.snapshot.backends, caller, model, KINDS)
    engine = db.engine
    pinned = _pinned_for_previous(state, engine, caller, body, routes)
    out = RequestOutcome(request_id=current_request_id(), route=request.path, client_ip=client_ip(),
                         user_id=caller.user_id, key_id=caller.key_id, model=model, streamed=streamed,
                         bytes_in=len(raw), tpm=caller.tpm, family=ROUTE_FAMILY)
    estimate_in = estimate_request_tokens(PARSER_FAMILY, body)
    worst_output = max_tokens if max_tokens is not None else current_app.config["DEFAULT_MAX_TOKENS_RESERVE"]
    out.tpm_hold = rate_checks.reserve_tokens(state, caller, estimate_in + worst_output)
    try:
        held = quota.reserve(caller, out.request_id, estimate_in, max_tokens, len(raw))
    except ApiError:
        rate_checks.give_back(state.storage, out.tpm_hold)
        raise
    targets: list[pool.Target] = []
    try:
        if pinned is not None:
            targets = [pinned]
        else:
            targets, soonest = pool.candidates(state, routes)
            if not targets:
                retry = {"Retry-After": str(max(1, int((soonest - utcnow()).total_seconds()) + 1))} if soonest else {}
                raise ApiError(503, "No healthy upstream key is available for this model; retry shortly",
                               code="no_healthy_upstream", headers=retry)
        client_headers = {k.lower(): v for k, v in request.headers.items()}
        bodies: dict[int, bytes] = {}

        def send(target: pool.Target) -> requests.Response:
            route = target.route
            if route.backend_id not in bodies:
                bodies[route.backend_id] = prepare_body(body, route.upstream_model, held.output_per_choice)
            headers = {"Content-Type": "application/json", "Accept": client_headers.get("accept", "*/*"),
                       "X-Request-ID": out.request_id,
                       **forward.credential_headers(route.kind, target.secret, client_headers)}
            return forward.post(route.base_url + UPSTREAM_PATH, bodies[route.backend_id], headers, _timeout(route))

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
        return _pass_error(state, engine, ROUTE_FAMILY, upstream, target, out, held, limit_headers, started)
    parser = UsageParser(PARSER_FAMILY, streaming=streamed)
    plan = RelayPlan(state=state, engine=engine, outcome=out, held=held, family=PARSER_FAMILY, started=started,
                     drain_seconds=current_app.config["DISCONNECT_DRAIN_SECONDS"], estimate_in=estimate_in,
                     budget=quota.byte_budget(engine, caller, held, counted=len(raw)),
                     renewal=quota.renewal(engine, held), secret=target.secret)
    owner = Owner(engine, target.route.backend_id, target.key_id, caller.user_id, caller.key_id,
                  wanted=body.get("store") is not False)
    headers = {**limit_headers, "X-Request-ID": out.request_id}
    if streamed:
        headers.update(STREAM_HEADERS)
    content_type = upstream.headers.get("Content-Type") or ("text/event-stream" if streamed else "application/json")
    return Response(relay_and_store(relay(upstream, parser, plan), parser, owner, streamed),
                    status=upstream.status_code, headers=headers, content_type=content_type,
                    direct_passthrough=True)


@bp.get("/v1/responses/<response_id>")
def retrieve(response_id: str) -> Response:
    return _follow_up("GET", response_id, "")


@bp.delete("/v1/responses/<response_id>")
def delete_response(response_id: str) -> Response:
    return _follow_up("DELETE", response_id, "")


@bp.post("/v1/responses/<response_id>/cancel")
def cancel(response_id: str) -> Response:
    return _follow_up("POST", response_id, "/cancel")


@bp.get("/v1/responses/<response_id>/input_items")
def input_items(response_id: str) -> Response:
    return _follow_up("GET", response_id, "/input_items")


def prepare_body(body: dict[str, Any], upstream_model: str | None, output_cap: int) -> bytes:
    """The upstream body: forbidden fields dropped, alias rewritten, and the reserved
    output budget as ``max_output_tokens`` when the client gave none; nothing else
    touched (``store``, ``include``, ``reasoning``, ``prompt_cache_key``, every tool)."""
    clean = forward.sanitize_body(body)
    if upstream_model:
        clean["model"] = upstream_model
    if output_cap > 0 and clean.get(CAP_FIELD) is None:
        clean[CAP_FIELD] = output_cap
    return json.dumps(clean, separators=(",", ":")).encode()


def _refuse_unsupported(body: dict[str, Any]) -> None:
    if body.get("background") is True:
        raise ApiError(400, "Background responses are not supported through this gateway: their usage is "
                            "only known after the request has ended, so it could not be accounted",
                       code="unsupported_parameter", param="background")
    if body.get("conversation") is not None:
        raise ApiError(400, "Conversations are not supported through this gateway; send the previous turns "
                            "as 'input' or use 'previous_response_id'",
                       code="unsupported_parameter", param="conversation")


def _timeout(route: routing.Route) -> tuple[float, float]:
    return (route.connect_timeout or current_app.config["UPSTREAM_CONNECT_TIMEOUT"],
            route.read_timeout or current_app.config["UPSTREAM_READ_TIMEOUT"])


# -- stored responses: who owns one, and which upstream key holds it ----------------------

@dataclass
class Owner:
    """Where a new response is recorded once its id is known (plain values: the relay
    outlives the request context). ``wanted`` is False for ``store: false``, whose
    response the provider does not keep: nothing to follow up, nothing recorded."""

    engine: Engine
    backend_id: int
    upstream_key_id: int
    user_id: int
    key_id: int
    wanted: bool = True
    done: bool = False

    def record(self, response_id: str) -> None:
        """One short transaction; a second sighting of the same id keeps the first owner
        (the unique constraint), and a database failure only costs the follow-ups."""
        self.done = True
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(_stored).values(
                    response_id=response_id, backend_id=self.backend_id, upstream_key_id=self.upstream_key_id,
                    user_id=self.user_id, key_id=self.key_id, created_at=utcnow()))
        except IntegrityError:
            log.warning("response id %s was already recorded; its first owner keeps it", response_id)
        except SQLAlchemyError as exc:
            log.error("recording stored response %s failed: %s", response_id, type(exc).__name__)


def relay_and_store(chunks: Iterator[bytes], parser: UsageParser, owner: Owner, streamed: bool) -> Iterator[bytes]:
    """The relay's bytes, with the stored response recorded before the client can learn
    its id: a stream's chunk carrying ``response.created`` is passed on only after the
    row is written; a JSON document (parsed when it is complete) is held back by its
    last chunk, which a client needs before it can read the id."""
    held_back: bytes | None = None
    try:
        for chunk in chunks:
            if owner.wanted and not owner.done and parser.usage.response_id:
                owner.record(parser.usage.response_id)
            if streamed:
                yield chunk
                continue
            if held_back is not None:
                yield held_back
            held_back = chunk
        if owner.wanted and not owner.done and parser.usage.response_id:
            owner.record(parser.usage.response_id)
        if held_back is not None:
            yield held_back
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _lookup(engine: Engine, caller: Caller, response_id: str) -> Any:
    """The stored row of ``response_id`` when it belongs to the caller's user, else None
    (another user's id and an unknown one are indistinguishable to the caller)."""
    if not RESPONSE_ID.fullmatch(response_id):
        return None
    with engine.connect() as conn:
        row = conn.execute(select(_stored).where(_stored.c.response_id == response_id)).first()
    if row is None or row.user_id != caller.user_id:
        return None
    return row


def _holder(state: WorkerState, row: Any, route: routing.Route | None, response_id: str) -> pool.Target:
    """The upstream key that holds a stored response, as a target; 409 when it can no
    longer be used (disabled, deleted, or its backend disabled or not allowed): no other
    key can answer for it."""
    key = state.snapshot.key_info(int(row.upstream_key_id))
    if route is None or key is None or key.backend_id != row.backend_id or not key.enabled or key.state == "disabled":
        raise ApiError(409, f"The upstream account that holds response '{response_id}' is disabled or no longer "
                            "available to this key; the response cannot be reached", code="stored_response_unavailable")
    return pool.Target(route, key.id, pool.secret_of(state.pool, key))


def _pinned_for_previous(state: WorkerState, engine: Engine, caller: Caller, body: dict[str, Any],
                         routes: list[routing.Route]) -> pool.Target | None:
    """With ``previous_response_id``, the one target that holds the previous response."""
    previous = body.get("previous_response_id")
    if previous is None:
        return None
    if not isinstance(previous, str):
        raise ApiError(400, "'previous_response_id' must be a string", code="invalid_value",
                       param="previous_response_id")
    row = _lookup(engine, caller, previous)
    if row is None:
        raise ApiError(400, f"Previous response with id '{previous[:128]}' not found.",
                       code="previous_response_not_found", param="previous_response_id")
    route = next((r for r in routes if r.backend_id == row.backend_id), None)
    return _holder(state, row, route, previous)


def _follow_up(method: str, response_id: str, suffix: str) -> Response:
    """Retrieve, delete, cancel or list the input items of a stored response, at the
    upstream key that holds it; no tokens, no quota reservation, one log row."""
    started = time.monotonic()
    state = worker_state()
    caller, limit_headers = admit(state)
    engine = db.engine
    row = _lookup(engine, caller, response_id)
    if row is None:
        raise ApiError(404, f"Response with id '{response_id[:128]}' not found.", code="response_not_found")
    route = routing.backend_route(state.snapshot.backends, caller, int(row.backend_id), KINDS)
    target = _holder(state, row, route, response_id)
    out = RequestOutcome(request_id=current_request_id(), route="/v1/responses/{id}" + suffix,
                         client_ip=client_ip(), user_id=caller.user_id, key_id=caller.key_id, family=ROUTE_FAMILY)
    url = target.route.base_url + UPSTREAM_PATH + "/" + response_id + suffix
    query = outbound.query_string(request.query_string)
    if query:
        url += "?" + query
    client_headers = {k.lower(): v for k, v in request.headers.items()}

    def send(chosen: pool.Target) -> requests.Response:
        headers = {"Accept": "application/json", "X-Request-ID": out.request_id,
                   **forward.credential_headers(chosen.route.kind, chosen.secret, client_headers)}
        return forward.session().request(method, url, headers=headers, data=b"" if method == "POST" else None,
                                         timeout=_timeout(chosen.route), stream=True, allow_redirects=False)

    try:
        attempted = forward.open_upstream(state, engine, [target], send, 1)
    except ApiError as error:
        out.backend_id = target.route.backend_id
        out.status, out.outcome, out.count_request, out.error_type = error.status, "rejected", False, error.code
        out.latency_ms = (time.monotonic() - started) * 1000
        record_usage(state, engine, out, None)
        raise
    upstream = attempted.response
    out.backend_id, out.upstream_key_id, out.status = target.route.backend_id, target.key_id, upstream.status_code
    if upstream.status_code >= 400:
        return _pass_error(state, engine, ROUTE_FAMILY, upstream, target, out, None, limit_headers, started)
    if method == "DELETE":
        _forget(engine, response_id)
    plan = RelayPlan(state=state, engine=engine, outcome=out, held=None, family="http", started=started,
                     drain_seconds=0.0, estimate_in=0, secret=target.secret)
    headers = {**limit_headers, "X-Request-ID": out.request_id}
    return Response(relay(upstream, CountingParser(), plan), status=upstream.status_code, headers=headers,
                    content_type=upstream.headers.get("Content-Type") or "application/json",
                    direct_passthrough=True)


def _forget(engine: Engine, response_id: str) -> None:
    """The provider deleted it: so does the gateway (a later follow-up is a plain 404)."""
    try:
        with engine.begin() as conn:
            conn.execute(delete(_stored).where(_stored.c.response_id == response_id))
    except SQLAlchemyError as exc:
        log.error("forgetting stored response %s failed: %s", response_id, type(exc).__name__)
