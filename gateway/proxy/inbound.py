"""Read and check what the client sent (the request-flow step after the key limits),
before anything costs money.

Bodies are read with a hard size limit (413), must be declared as JSON where the route
expects JSON (415), must be a JSON object (400), and name a model (400; no control or
format characters, the rule of ``gateway/model_names.py``). Nothing here echoes the
body back.
"""
from __future__ import annotations

import json
from typing import Any

from flask import current_app, request

from .. import model_names
from ..errors import ApiError

MAX_JSON_DEPTH = 64


def read_body() -> bytes:
    limit = current_app.config["MAX_BODY_BYTES"]
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, f"Request body is larger than the {limit}-byte limit", code="request_too_large")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"Request body is larger than the {limit}-byte limit", code="request_too_large")
    return data


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def is_json_type(mimetype: str) -> bool:
    """``application/json`` or a ``+json`` type (``application/merge-patch+json``);
    parameters such as ``; charset=utf-8`` are not part of Werkzeug's ``mimetype``."""
    kind = mimetype.strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def parse_json_object(data: bytes) -> dict[str, Any]:
    """The body as a JSON object. A body declared as something else (``text/plain``, a
    form) is refused before it is parsed, even when it happens to be valid JSON: what the
    client says it sent is what we act on, and a mislabelled body costs nothing and
    reaches no upstream. A body with no Content-Type at all is parsed as JSON (some
    clients send none)."""
    mimetype = request.mimetype
    if mimetype and not is_json_type(mimetype):
        raise ApiError(415, "The request body must be sent as Content-Type: application/json",
                       code="unsupported_media_type")
    if not data:
        raise ApiError(400, "The request body must be a JSON object", code="invalid_json")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise ApiError(400, "The request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object", code="invalid_json")
    if _depth(body) > MAX_JSON_DEPTH:
        raise ApiError(400, "The request body is nested too deeply", code="invalid_json")
    return body


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        raise ApiError(400, "The 'model' field is required and must be a model name", code="invalid_model",
                       param="model")
    if model_names.problem(model):
        raise ApiError(400, f"The 'model' field {model_names.MESSAGE}", code="invalid_model", param="model")
    return model.strip()


OUTPUT_CAP_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
# How many completions a request can make the upstream generate (and bill): OpenAI's
# ``n`` (chat and completions) and ``best_of`` (completions), with the provider's maxima.
CHOICE_FIELDS = {"n": 128, "best_of": 20}


def max_tokens_of(body: dict[str, Any], required: bool = False) -> int | None:
    """The output cap the client asked for: the LARGEST of the fields it sent, so a
    client cannot reserve by a small one while the upstream honours a big one."""
    found: int | None = None
    for name in OUTPUT_CAP_FIELDS:
        if name in body and body[name] is not None:
            value = body[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > 10_000_000:
                raise ApiError(400, f"'{name}' must be a positive integer", code="invalid_value", param=name)
            found = value if found is None else max(found, value)
    if found is None and required:
        raise ApiError(400, "'max_tokens' is required", code="invalid_value", param="max_tokens")
    return found


def choices_of(body: dict[str, Any]) -> int:
    """How many completions the upstream generates for this body (``n``, ``best_of``):
    the output reservation is multiplied by it."""
    count = 1
    for name, most in CHOICE_FIELDS.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > most:
            raise ApiError(400, f"'{name}' must be an integer from 1 to {most}", code="invalid_value", param=name)
        count = max(count, value)
    return count


def wants_stream(body: dict[str, Any]) -> bool:
    value = body.get("stream", False)
    if not isinstance(value, bool):
        raise ApiError(400, "'stream' must be true or false", code="invalid_value", param="stream")
    return value
