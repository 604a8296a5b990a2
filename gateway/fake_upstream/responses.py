"""The OpenAI Responses API of the fake upstream: ``POST /v1/responses`` (JSON, or SSE
with the real event sequence), function-call turns, and stored responses
(``GET``/``DELETE /v1/responses/{id}``, ``POST .../cancel``, ``GET .../input_items``),
kept in memory per fake process and per upstream key, the way a provider keeps them
per account: another key gets 404, which is what proves a gateway pins follow-ups.

Deterministic usage, so tests assert exact rows:

- ``input_tokens``: the words of ``instructions`` and ``input`` (``prompts.count_prompt_tokens``),
  plus, after ``previous_response_id``, the previous response's input and output tokens
  (the provider bills the whole conversation again);
- ``output_tokens``: ``[[tokens:N]]`` (16 by default) text words, capped by
  ``max_output_tokens`` (then the response is ``incomplete``), plus ``[[reasoning:N]]``
  reasoning tokens (``output_tokens_details.reasoning_tokens``);
- ``input_tokens_details.cached_tokens``: ``[[cache_read:N]]``.

Function calls: with ``tools`` and ``[[call:NAME]]`` in the last user message (and no
``function_call_output`` after it), the answer is a ``function_call`` of NAME whose
arguments fill the tool's required parameters (strings ``"echo fake-tool-ok"``, string
arrays ``["echo", "fake-tool-ok"]``), streamed as argument deltas; once the input carries
the call's output, the answer is text again.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .http import Connection, Request
from .prompts import DEFAULT_COMPLETION_TOKENS, Directives, count_prompt_tokens
from .providers import BOGUS, _new_id, _sse, _words, openai_error, stream_events

STORE_LIMIT = 2000
TOOL_COMMAND = ["echo", "fake-tool-ok"]


class ResponseStore:
    """Stored responses of one fake process: id -> (upstream key, response, input items)."""

    def __init__(self) -> None:
        self.items: OrderedDict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]] = OrderedDict()

    def put(self, key: str, response: dict[str, Any], inputs: list[dict[str, Any]]) -> None:
        if len(self.items) >= STORE_LIMIT:
            self.items.popitem(last=False)
        self.items[response["id"]] = (key, response, inputs)

    def get(self, key: str, response_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        found = self.items.get(response_id)
        if found is None or found[0] != key:
            return None  # another account's response does not exist for this key
        return found[1], found[2]

    def reset(self) -> None:
        self.items.clear()


def _not_found(response_id: str) -> dict[str, Any]:
    return {"error": {"message": f"Response with id '{response_id}' not found.", "type": "invalid_request_error",
                      "param": None, "code": None}}


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's ``input`` as stored items (ids added), the way input_items lists them."""
    raw = body.get("input")
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    items: list[dict[str, Any]] = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict):
            stored = dict(item)
            stored.setdefault("type", "message")
            stored.setdefault("id", _new_id("msg_" if stored["type"] == "message" else "item_"))
            stored.setdefault("status", "completed")
            items.append(stored)
    return items


def _wants_call(body: dict[str, Any], d: Directives) -> dict[str, Any] | None:
    """The function tool to call, when asked and not already answered."""
    if not d.call:
        return None
    tools = body.get("tools")
    raw = body.get("input")
    if isinstance(raw, list):
        # A function_call_output after the last user message: the call was made; answer text.
        for item in reversed(raw):
            if isinstance(item, dict) and item.get("type") == "function_call_output":
                return None
            if isinstance(item, dict) and item.get("role") == "user":
                break
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and tool.get("type") == "function" and tool.get("name") == d.call:
            return tool
    return None


def _arguments(tool: dict[str, Any]) -> str:
    def mapping(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    schema = mapping(tool.get("parameters"))
    properties = mapping(schema.get("properties"))
    required = schema.get("required")
    values: dict[str, Any] = {}
    for name in required if isinstance(required, list) else []:
        kind = mapping(properties.get(name)).get("type", "string")
        if kind == "array":
            values[name] = TOOL_COMMAND
        elif kind in ("integer", "number"):
            values[name] = 10000
        elif kind == "boolean":
            values[name] = False
        elif kind == "object":
            values[name] = {}
        else:
            values[name] = " ".join(TOOL_COMMAND)
    return json.dumps(values, separators=(",", ":"))


def _usage(prompt: int, output: int, d: Directives) -> dict[str, Any] | None:
    if d.usage == "none":
        return None
    if d.usage == "bogus":
        return {"input_tokens": BOGUS[0], "output_tokens": BOGUS[1], "total_tokens": "lots"}
    total_out = output + d.reasoning
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": d.cache_read},
            "output_tokens": total_out, "output_tokens_details": {"reasoning_tokens": d.reasoning},
            "total_tokens": prompt + total_out}


def create(conn: Connection, store: ResponseStore, key: str, body: dict[str, Any], d: Directives) -> None:
    model = body.get("model") if isinstance(body.get("model"), str) else "gpt-4o-mini"
    prompt = count_prompt_tokens(body)
    previous_id = body.get("previous_response_id")
    if previous_id is not None:
        previous = store.get(key, str(previous_id))
        if previous is None:
            conn.send_json(400, {"error": {"message": f"Previous response with id '{previous_id}' not found.",
                                           "type": "invalid_request_error", "param": "previous_response_id",
                                           "code": "previous_response_not_found"}})
            return
        before = previous[0].get("usage") or {}
        prompt += int(before.get("input_tokens", 0)) + int(before.get("output_tokens", 0))
    wanted = d.tokens if d.tokens is not None else DEFAULT_COMPLETION_TOKENS
    cap = body.get("max_output_tokens")
    n = min(wanted, cap) if type(cap) is int and cap >= 0 else wanted
    tool = _wants_call(body, d)
    incomplete = tool is None and n < wanted
    response_id = _new_id("resp_")
    base: dict[str, Any] = {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": cap, "model": model, "output": [], "parallel_tool_calls": True,
        "previous_response_id": previous_id, "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": body.get("store") is not False, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [], "top_p": 1.0,
        "truncation": "disabled", "usage": None, "user": None, "metadata": body.get("metadata") or {}}
    if tool is not None:
        arguments = _arguments(tool)
        item: dict[str, Any] = {"id": _new_id("fc_"), "type": "function_call", "status": "completed",
                                "arguments": arguments, "call_id": _new_id("call_"), "name": tool["name"]}
        pieces = [arguments[i:i + 8] for i in range(0, len(arguments), 8)]
    else:
        text = "".join(_words(n))
        item = {"id": _new_id("msg_"), "type": "message", "status": "incomplete" if incomplete else "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
        pieces = _words(n)
    final = {**base, "status": "incomplete" if incomplete else "completed", "output": [item],
             "usage": _usage(prompt, n, d),
             "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None}
    if base["store"]:
        store.put(key, final, input_items(body))
    if not body.get("stream"):
        conn.send_json(200, final)
        return
    sequence = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": next(sequence), **fields}, kind)

    head = [event("response.created", response=base), event("response.in_progress", response=base)]
    if tool is not None:
        added = {**item, "status": "in_progress", "arguments": ""}
        head.append(event("response.output_item.added", output_index=0, item=added))
        content = (event("response.function_call_arguments.delta", item_id=item["id"], output_index=0, delta=piece)
                   for piece in pieces)
    else:
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        head += [event("response.output_item.added", output_index=0,
                       item={**item, "status": "in_progress", "content": []}),
                 event("response.content_part.added", item_id=item["id"], output_index=0, content_index=0, part=part)]
        if d.big_event:
            head.append(event("response.output_text.delta", item_id=item["id"], output_index=0, content_index=0,
                              delta="x" * d.big_event, logprobs=[]))
        content = (event("response.output_text.delta", item_id=item["id"], output_index=0, content_index=0,
                         delta=piece, logprobs=[]) for piece in pieces)

    def tail() -> Iterator[bytes]:
        # Lazy, so the sequence numbers follow the content events'.
        if tool is not None:
            yield event("response.function_call_arguments.done", item_id=item["id"], output_index=0,
                        arguments=item["arguments"])
        else:
            done_part = item["content"][0]
            yield event("response.output_text.done", item_id=item["id"], output_index=0, content_index=0,
                        text=done_part["text"], logprobs=[])
            yield event("response.content_part.done", item_id=item["id"], output_index=0, content_index=0,
                        part=done_part)
        yield event("response.output_item.done", output_index=0, item=item)
        yield event("response.incomplete" if incomplete else "response.completed", response=final)

    stream_events(conn, head, content, tail(), d)


def follow_up(conn: Connection, store: ResponseStore, key: str, request: Request) -> None:
    """``/v1/responses/{id}[/cancel|/input_items]`` for the key that stored it."""
    rest = request.path.rstrip("/")[len("/v1/responses/"):]
    response_id, _, action = rest.partition("/")
    found = store.get(key, response_id)
    if found is None:
        conn.send_json(404, _not_found(response_id))
        return
    response, items = found
    if request.method == "GET" and action == "":
        conn.send_json(200, response)
    elif request.method == "DELETE" and action == "":
        store.items.pop(response_id, None)
        conn.send_json(200, {"id": response_id, "object": "response", "deleted": True})
    elif request.method == "POST" and action == "cancel":
        conn.send_json(400, openai_error(400, "Only responses created with background=true can be cancelled."))
    elif request.method == "GET" and action == "input_items":
        ordered = items if "order=asc" in request.query else list(reversed(items))
        conn.send_json(200, {"object": "list", "data": ordered, "first_id": ordered[0]["id"] if ordered else None,
                             "last_id": ordered[-1]["id"] if ordered else None, "has_more": False})
    else:
        conn.send_json(404, openai_error(404, f"Unknown route {request.method} {request.path}"))
