"""Gemini-API answers (``/v1beta/models...``), faithful enough for ``google-genai`` and
Gemini CLI, with deterministic usage:

- ``promptTokenCount``: ``count_gemini_prompt_tokens`` - words of the text parts of
  ``contents`` and ``systemInstruction``, and of the JSON of function calls and
  function responses (``count_prompt_tokens``' rule, Gemini's places);
- ``candidatesTokenCount``: ``tok0 tok1 ...``, one word per token, 16 or ``[[tokens:N]]``,
  capped by ``generationConfig.maxOutputTokens``, times ``candidateCount``; a function
  call is ``FUNCTION_CALL_TOKENS``;
- ``thoughtsTokenCount``: ``THOUGHT_TOKENS`` (capped by a positive ``thinkingBudget``)
  when ``generationConfig.thinkingConfig`` asks for thinking (a budget other than 0, or
  ``includeThoughts``); the thought parts (``"thought": true``) are sent only with
  ``includeThoughts``;
- ``cachedContentTokenCount``: ``[[cache_read:N]]``.

A function call is made when the request declares the function in
``tools[].functionDeclarations`` and the last user turn asks with
``[[function:NAME]]`` (arguments from ``[[args:{JSON}]]``); a last user turn that
carries a ``functionResponse`` is answered with text. Streams: ``alt=sse`` sends one
SSE event per token, each with the cumulative ``usageMetadata`` (the last one is the
total, as Google does); without it the same responses form one JSON array. The other
directives (``status``, ``reset_after``, ``stall_after``, ``usage:none|bogus``, ...) and
the key markers (``fail429`` ...) work as on the other providers, with Google's error
shape.
"""
from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .prompts import _DIRECTIVE, DEFAULT_COMPLETION_TOKENS, Directives

if TYPE_CHECKING:
    from .http import Connection, Request

MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash")
THOUGHT_TOKENS = 8
FUNCTION_CALL_TOKENS = 5
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_MODEL_METHOD = re.compile(r"/v1(?:beta)?/models/([\w.@-]+):(\w+)")
_ids = itertools.count(1)
Misbehave = Callable[["Connection", str, Callable[[int, str], dict[str, Any]]], bool]


def is_v1_method(path: str) -> bool:
    """``/v1/models/{model}:{method}``: the stable version's methods (``/v1/`` is
    otherwise OpenAI's and Anthropic's here)."""
    return _MODEL_METHOD.fullmatch(path) is not None and path.startswith("/v1/")


def gemini_error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": STATUS_NAMES.get(status, "UNKNOWN")}}


def key_of(request: Request) -> str | None:
    """Google's two places for the key: the ``x-goog-api-key`` header, ``?key=``."""
    header = request.headers.get("x-goog-api-key")
    if header:
        return header
    values = parse_qs(request.query).get("key")
    return values[0] if values else None


# -- what the request says (pure) ------------------------------------------------------

def _field(body: dict[str, Any], camel: str, snake: str) -> Any:
    return body.get(camel) if body.get(camel) is not None else body.get(snake)


def _part_words(part: Any) -> int:
    if not isinstance(part, dict):
        return 0
    words = len(part["text"].split()) if isinstance(part.get("text"), str) else 0
    for key in ("functionCall", "functionResponse", "function_call", "function_response"):
        if part.get(key) is not None:
            words += len(json.dumps(part[key], sort_keys=True).split())
    return words


def _content_words(content: Any) -> int:
    if isinstance(content, str):
        return len(content.split())
    parts = content.get("parts") if isinstance(content, dict) else None
    return sum(_part_words(part) for part in parts) if isinstance(parts, list) else 0


def count_gemini_prompt_tokens(body: Any) -> int:
    """The ``promptTokenCount`` the fake reports for a generateContent (or countTokens)
    body; importable by tests to predict exact usage."""
    if not isinstance(body, dict):
        return 0
    inner = _field(body, "generateContentRequest", "generate_content_request")
    if isinstance(inner, dict):
        body = inner
    contents = body.get("contents")
    total = sum(_content_words(c) for c in contents) if isinstance(contents, list) else 0
    return total + _content_words(_field(body, "systemInstruction", "system_instruction"))


def _last_user(body: dict[str, Any]) -> dict[str, Any]:
    contents = body.get("contents")
    if isinstance(contents, list):
        for content in reversed(contents):
            if isinstance(content, dict) and content.get("role", "user") == "user":
                return content
    return {}


def _parts(content: dict[str, Any]) -> list[dict[str, Any]]:
    parts = content.get("parts")
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def last_user_text(body: dict[str, Any]) -> str:
    return " ".join(p["text"] for p in _parts(_last_user(body)) if isinstance(p.get("text"), str))


def _declared_functions(body: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        declarations = _field(tool, "functionDeclarations", "function_declarations") if isinstance(tool, dict) else None
        for declaration in declarations if isinstance(declarations, list) else []:
            if isinstance(declaration, dict) and isinstance(declaration.get("name"), str):
                names.add(declaration["name"])
    return names


def function_call_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function call the last user turn asks for, or None (also after a function
    response: the model then answers in text)."""
    last = _last_user(body)
    if any(_field(p, "functionResponse", "function_response") is not None for p in _parts(last)):
        return None
    asked = dict(_DIRECTIVE.findall(last_user_text(body)))
    name = asked.get("function", "").strip()
    if not name or name not in _declared_functions(body):
        return None
    try:
        args = json.loads(asked["args"]) if "args" in asked else {}
    except ValueError:
        args = {}
    return {"name": name, "args": args if isinstance(args, dict) else {}}


def _config(body: dict[str, Any]) -> dict[str, Any]:
    config = _field(body, "generationConfig", "generation_config")
    return config if isinstance(config, dict) else {}


def thoughts_of(config: dict[str, Any]) -> tuple[int, bool]:
    """(thought tokens, whether the thought parts are sent)."""
    thinking = _field(config, "thinkingConfig", "thinking_config")
    if not isinstance(thinking, dict):
        return 0, False
    include = _field(thinking, "includeThoughts", "include_thoughts") is True
    budget = _field(thinking, "thinkingBudget", "thinking_budget")
    if budget == 0 and not include:
        return 0, False
    tokens = min(THOUGHT_TOKENS, budget) if type(budget) is int and budget > 0 else THOUGHT_TOKENS
    return tokens, include


def output_tokens(config: dict[str, Any], d: Directives) -> int:
    wanted = d.tokens if d.tokens is not None else DEFAULT_COMPLETION_TOKENS
    cap = _field(config, "maxOutputTokens", "max_output_tokens")
    return min(wanted, cap) if type(cap) is int and cap >= 0 else wanted


def candidates_of(config: dict[str, Any]) -> int:
    count = _field(config, "candidateCount", "candidate_count")
    return count if type(count) is int and 1 <= count <= 8 else 1


def _from_schema(schema: Any, depth: int = 0) -> Any:
    """A deterministic value matching a (Gemini or JSON) schema: the first enum value,
    ``"tok0"`` for strings, 1 for numbers, true, one-item arrays, every property."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = str(schema.get("type", "object")).lower()
    if kind == "object":
        properties = schema.get("properties")
        return {name: _from_schema(sub, depth + 1) for name, sub in properties.items()} \
            if isinstance(properties, dict) else {}
    if kind == "array":
        return [_from_schema(schema.get("items"), depth + 1)]
    return {"string": "tok0", "integer": 1, "number": 1, "boolean": True}.get(kind)


def structured_answer(config: dict[str, Any]) -> str | None:
    """The JSON text answered when ``responseMimeType`` is ``application/json``."""
    if _field(config, "responseMimeType", "response_mime_type") != "application/json":
        return None
    schema = next((config[name] for name in ("responseJsonSchema", "response_json_schema", "responseSchema",
                                             "response_schema") if config.get(name) is not None), None)
    return json.dumps(_from_schema(schema) if schema is not None else {"answer": "tok0"})


def usage_metadata(prompt: int, candidates: int, thoughts: int, d: Directives) -> dict[str, Any] | None:
    if d.usage == "none":
        return None
    if d.usage == "bogus":
        return {"promptTokenCount": -7, "candidatesTokenCount": 99_999_999_999, "totalTokenCount": "lots"}
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
                             "totalTokenCount": prompt + candidates + thoughts,
                             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if d.cache_read:
        usage["cachedContentTokenCount"] = d.cache_read
    return usage


# -- serving -----------------------------------------------------------------------------

def _card(name: str) -> dict[str, Any]:
    return {"name": f"models/{name}", "version": "001", "displayName": name, "description": "fake",
            "inputTokenLimit": 1_048_576, "outputTokenLimit": 65_536,
            "supportedGenerationMethods": ["generateContent", "countTokens"]}


def serve(conn: Connection, request: Request, key: str | None, misbehave: Misbehave) -> None:
    """One ``/v1beta/...`` request."""
    from .providers import stream_events  # gevent: only in the serving process

    if key is None:
        conn.send_json(403, gemini_error(403, "Method doesn't allow unregistered callers (callers without "
                                              "established identity). Please use API Key or other form of "
                                              "API consumer identity to call this API."))
        return
    if misbehave(conn, key, gemini_error):
        return
    path = request.path.rstrip("/")
    if request.method == "GET" and path == "/v1beta/models":
        conn.send_json(200, {"models": [_card(name) for name in MODELS]})
        return
    if request.method == "GET" and path.startswith("/v1beta/models/"):
        name = path[len("/v1beta/models/"):]
        if name in MODELS:
            conn.send_json(200, _card(name))
        else:
            conn.send_json(404, gemini_error(404, f"models/{name} is not found for API version v1beta"))
        return
    match = _MODEL_METHOD.fullmatch(path)
    if request.method != "POST" or match is None or match.group(2) not in (
            "generateContent", "streamGenerateContent", "countTokens"):
        conn.send_json(404, gemini_error(404, f"Unknown route {request.method} {request.path}"))
        return
    model, method = match.groups()
    body = request.json
    if not isinstance(body, dict):
        conn.send_json(400, gemini_error(400, "Invalid JSON payload received."))
        return
    d = Directives.parse(last_user_text(body))
    if d.delay:
        import gevent

        gevent.sleep(d.delay)
    if d.status is not None and d.status >= 400:
        headers = [("Retry-After", d.retry_after)] if d.retry_after else []
        conn.send_json(d.status, gemini_error(d.status, f"Fake failure {d.status}"), headers)
        return
    prompt = count_gemini_prompt_tokens(body)
    if method == "countTokens":
        answer: dict[str, Any] = {"totalTokens": prompt,
                                  "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
        conn.send_json(200, answer)
        return
    responses = _responses(model, body, prompt, d)
    if method == "generateContent":
        conn.send_json(200, _merged(responses))
        return
    sse = "alt=sse" in request.query.split("&")
    if sse:
        events = [b"data: " + json.dumps(r, separators=(",", ":")).encode() + b"\r\n\r\n" for r in responses]
        stream_events(conn, [], events[:-1], events[-1:], d)
        return
    pieces = [(b"[" if i == 0 else b",\r\n") + json.dumps(r).encode() for i, r in enumerate(responses)]
    pieces[-1] += b"]"
    stream_events(conn, [], pieces[:-1], pieces[-1:], d, content_type="application/json; charset=UTF-8")


def _responses(model: str, body: dict[str, Any], prompt: int, d: Directives) -> list[dict[str, Any]]:
    """The streamed responses of a generation, in order; the last one is final (finish
    reason, total usage). ``generateContent`` answers their merge."""
    config = _config(body)
    choices = candidates_of(config)
    thoughts, show_thoughts = thoughts_of(config)
    base = {"modelVersion": model, "responseId": f"fake-gemini-{next(_ids):08d}"}

    def response(parts: list[dict[str, Any]], produced: int, thought: int, finish: str | None = None,
                 ) -> dict[str, Any]:
        candidates = []
        for index in range(choices):
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": index}
            if finish:
                candidate["finishReason"] = finish
            candidates.append(candidate)
        answer: dict[str, Any] = {"candidates": candidates, **base}
        usage = usage_metadata(prompt, produced * choices, thought, d)
        if usage is not None:
            answer["usageMetadata"] = usage
        return answer

    out: list[dict[str, Any]] = []
    if show_thoughts:
        out += [response([{"text": f"thinking{i} ", "thought": True}], 0, i + 1) for i in range(thoughts)]
    structured = structured_answer(config)
    if structured is not None:
        # One JSON text, its words as the tokens (Gemini CLI's router and "next speaker"
        # checks ask for JSON and retry until they get it).
        out.append(response([{"text": structured}], len(structured.split()), thoughts, "STOP"))
        return out
    call = function_call_of(body)
    if call is not None:
        out.append(response([{"functionCall": call}], FUNCTION_CALL_TOKENS, thoughts, "STOP"))
        return out
    n = output_tokens(config, d)
    wanted = d.tokens if d.tokens is not None else DEFAULT_COMPLETION_TOKENS
    if d.big_event:
        out.append(response([{"text": "x" * d.big_event}], 0, thoughts))
    out += [response([{"text": f"tok{i} "}], i + 1, thoughts) for i in range(n)]
    out.append(response([{"text": ""}], n, thoughts, "MAX_TOKENS" if n < wanted else "STOP"))
    return out


def _merged(responses: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer: each candidate's parts joined (consecutive text of the
    same kind merged), the last response's finish reason and usage."""
    final = dict(responses[-1])
    merged = []
    for index, candidate in enumerate(final["candidates"]):
        parts: list[dict[str, Any]] = []
        for response in responses:
            for part in response["candidates"][index]["content"]["parts"]:
                if (parts and "text" in part and "text" in parts[-1]
                        and parts[-1].get("thought") == part.get("thought")):
                    parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
                elif part.get("text") != "":
                    parts.append(dict(part))
        merged.append({**candidate, "content": {"parts": parts, "role": "model"}})
    final["candidates"] = merged
    return final
