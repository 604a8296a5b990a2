"""OpenAI- and Anthropic-shaped answers, faithful enough for the official SDKs, with
deterministic usage (see ``prompts``) and the stream misbehaviour directives ask for.

Completion text is ``tok0 tok1 ...``: one word per output token, one content event
per token, so a test can predict both the text and the event count.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import struct
import time
from collections.abc import Iterable
from typing import Any

import gevent

from .http import Connection
from .prompts import DEFAULT_COMPLETION_TOKENS, Directives, completion_tokens, count_prompt_tokens

STALL_SECONDS = 60.0
BOGUS = -7, 99_999_999_999   # implausible numbers for [[usage:bogus]]
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-opus-4-6", "claude-haiku-4-5")
_ids = itertools.count(1)
SSE_HEADERS = [("Cache-Control", "no-cache")]


def _new_id(prefix: str) -> str:
    return f"{prefix}fake{next(_ids):08d}"


def _sse(payload: Any, event: str | None = None) -> bytes:
    data = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    return b"event: " + event.encode() + b"\n" + data if event else data


def stream_events(conn: Connection, head: Iterable[bytes], content: Iterable[bytes], tail: Iterable[bytes],
                  directives: Directives, content_type: str = "text/event-stream; charset=utf-8") -> None:
    """Send one SSE stream (or another chunked stream of ``content_type``): ``head``
    events, the per-token ``content`` events (where reset_after / stall_after count),
    then ``tail``."""
    conn.start_chunked(200, content_type, SSE_HEADERS)
    pause = directives.interval

    def emit(event: bytes) -> None:
        conn.send_chunk(event)
        if pause:
            gevent.sleep(pause)

    for event in head:
        emit(event)
    for sent, event in enumerate(content):
        if sent == directives.reset_after:
            conn.reset()
        if sent == directives.stall_after:
            gevent.sleep(STALL_SECONDS)
            conn.reset()
        emit(event)
    if directives.reset_after is not None:
        conn.reset()   # asked to reset after more events than there were
    if directives.stall_after is not None:
        gevent.sleep(STALL_SECONDS)
        conn.reset()
    for event in tail:
        emit(event)
    conn.end_chunked()


def _wanted(d: Directives) -> int:
    return d.tokens if d.tokens is not None else DEFAULT_COMPLETION_TOKENS


def _words(n: int) -> list[str]:
    return [f"tok{i} " for i in range(n)]


# -- OpenAI ----------------------------------------------------------------------------

def openai_usage(prompt: int, completion: int, d: Directives) -> dict[str, Any] | None:
    if d.usage == "none":
        return None
    if d.usage == "bogus":
        return {"prompt_tokens": BOGUS[0], "completion_tokens": BOGUS[1], "total_tokens": "lots"}
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": d.cache_read, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def openai_generate(conn: Connection, body: dict[str, Any], d: Directives, chat: bool) -> None:
    """``/v1/chat/completions`` (chat=True) and ``/v1/completions``."""
    model = body.get("model") if isinstance(body.get("model"), str) else "gpt-4o-mini"
    prompt, n = count_prompt_tokens(body), completion_tokens(body, d)
    finish = "length" if n < _wanted(d) else "stop"
    usage = openai_usage(prompt, n, d)
    base = {"id": _new_id("chatcmpl-" if chat else "cmpl-"),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "system_fingerprint": "fp_fake"}
    if not body.get("stream"):
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(_words(n)), "refusal": None,
                                              "annotations": []}, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": "".join(_words(n)), "logprobs": None, "finish_reason": finish}
        answer = {**base, "object": "chat.completion" if chat else "text_completion", "choices": [choice]}
        if usage is not None:
            answer["usage"] = usage
        conn.send_json(200, answer)
        return
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any] | str, finish_reason: str | None = None) -> bytes:
        if chat:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**base, "choices": [choice], **extra})

    head = [chunk({"role": "assistant", "content": "", "refusal": None})] if chat else []
    if d.big_event:
        head.append(chunk({"content": "x" * d.big_event} if chat else "x" * d.big_event))
    content = (chunk({"content": word} if chat else word) for word in _words(n))
    tail = [chunk({} if chat else "", finish)]
    if include_usage and usage is not None:
        tail.append(_sse({**base, "choices": [], "usage": usage}))
    tail.append(b"data: [DONE]\n\n")
    stream_events(conn, head, content, tail, d)


def _embedding(text: str, fmt: Any) -> Any:
    digest = hashlib.sha256(text.encode()).digest()
    vector = [round((byte - 128) / 128, 6) for byte in digest[:8]]
    if fmt == "base64":
        return base64.b64encode(struct.pack("<8f", *vector)).decode()
    return vector


def openai_embeddings(conn: Connection, body: dict[str, Any], d: Directives) -> None:
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(type(i) is int for i in raw)):
        inputs = [raw]
    elif isinstance(raw, list) and raw:
        inputs = raw
    else:
        conn.send_json(400, openai_error(400, "'input' must be a string or a non-empty list"))
        return
    fmt = body.get("encoding_format")
    data = [{"object": "embedding", "index": i, "embedding": _embedding(json.dumps(item), fmt)}
            for i, item in enumerate(inputs)]
    answer: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model") or "text-embedding-3-small"}
    prompt = count_prompt_tokens(body)
    if d.usage == "bogus":
        answer["usage"] = {"prompt_tokens": BOGUS[0], "total_tokens": BOGUS[1]}
    elif d.usage != "none":
        answer["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
    conn.send_json(200, answer)


def openai_models(conn: Connection, model_id: str | None = None) -> None:
    def card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake-upstream"}
    if model_id is None:
        conn.send_json(200, {"object": "list", "data": [card(name) for name in MODELS]})
    elif model_id in MODELS:
        conn.send_json(200, card(model_id))
    else:
        conn.send_json(404, openai_error(404, f"The model '{model_id}' does not exist"))


OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                      404: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error",
                      503: "server_error"}
OPENAI_ERROR_CODES = {401: "invalid_api_key", 403: "unsupported_country_region_territory",
                      404: "model_not_found", 429: "rate_limit_exceeded"}


def openai_error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": OPENAI_ERROR_TYPES.get(status, "server_error"),
                      "param": None, "code": OPENAI_ERROR_CODES.get(status)}}


# -- Anthropic -------------------------------------------------------------------------

ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         500: "api_error", 503: "overloaded_error", 529: "overloaded_error"}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message}}


def anthropic_usage(prompt: int, output: int, d: Directives) -> dict[str, Any] | None:
    if d.usage == "none":
        return None
    if d.usage == "bogus":
        return {"input_tokens": BOGUS[0], "output_tokens": BOGUS[1], "cache_creation_input_tokens": -1,
                "cache_read_input_tokens": -1}
    return {"input_tokens": prompt, "cache_creation_input_tokens": d.cache_creation,
            "cache_read_input_tokens": d.cache_read, "output_tokens": output, "service_tier": "standard"}


def anthropic_messages(conn: Connection, body: dict[str, Any], d: Directives) -> None:
    model = body.get("model") if isinstance(body.get("model"), str) else "claude-opus-4-6"
    prompt, n = count_prompt_tokens(body), completion_tokens(body, d)
    stop = "max_tokens" if n < _wanted(d) else "end_turn"
    message = {"id": _new_id("msg_"), "type": "message", "role": "assistant", "model": model}
    if not body.get("stream"):
        answer = {**message, "content": [{"type": "text", "text": "".join(_words(n))}],
                  "stop_reason": stop, "stop_sequence": None}
        usage = anthropic_usage(prompt, n, d)
        if usage is not None:
            answer["usage"] = usage
        conn.send_json(200, answer)
        return
    start: dict[str, Any] = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start_usage = anthropic_usage(prompt, 1, d)
    if start_usage is not None:
        start["usage"] = start_usage
    head = [_sse({"type": "message_start", "message": start}, "message_start"),
            _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                 "content_block_start"),
            _sse({"type": "ping"}, "ping")]

    def delta(text: str) -> bytes:
        return _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
                    "content_block_delta")

    if d.big_event:
        head.append(delta("x" * d.big_event))
    final: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}}
    end_usage = anthropic_usage(prompt, n, d)
    if end_usage is not None:
        final["usage"] = {"output_tokens": end_usage["output_tokens"]}
    tail = [_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse(final, "message_delta"), _sse({"type": "message_stop"}, "message_stop")]
    stream_events(conn, head, (delta(word) for word in _words(n)), tail, d)


def anthropic_count_tokens(conn: Connection, body: dict[str, Any]) -> None:
    conn.send_json(200, {"input_tokens": count_prompt_tokens(body)})
